"""Inbound rate limit for one connection: a token bucket (rate per second, burst), and a
count of consecutive refusals so a sustained excess can be told from a burst."""

from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "updated", "refused_in_a_row", "clock")

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()
        self.refused_in_a_row = 0

    def take(self, now: float | None = None, cost: float = 1.0) -> bool:
        """Take `cost` tokens (one a message, unless the caller weighs it); False, and a
        refusal counted, when there are not so many."""
        now = self.clock() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False
