"""Delivery-latency window: the last N samples (milliseconds) and their percentiles,
nearest-rank, as `/api/websocket/status` reports them."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    def __init__(self, size: int = 1000):
        self._samples: deque[float] = deque(maxlen=size)

    def record(self, milliseconds: float) -> None:
        self._samples.append(milliseconds)

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles(self) -> dict[str, float]:
        """`median`, `p95` and `p99` of the window; zeros while it is empty."""
        ordered = sorted(self._samples)
        if not ordered:
            return {"median": 0.0, "p95": 0.0, "p99": 0.0}

        def rank(p: float) -> float:
            index = max(0, math.ceil(p * len(ordered)) - 1)
            return round(ordered[index], 3)

        return {"median": rank(0.5), "p95": rank(0.95), "p99": rank(0.99)}
