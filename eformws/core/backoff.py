"""How long to wait before trying again: one capped exponential backoff with jitter, for
clients that reconnect and for the server's Redis connections and retry loops."""

from __future__ import annotations

import random as _random
from collections.abc import Callable

INITIAL_DELAY = 0.5  # seconds: the ceiling of the first wait
MAX_DELAY = 30.0  # seconds: the ceiling never grows past this
FACTOR = 2.0  # the ceiling is multiplied by this after every failed attempt
FULL_JITTER = 0.0  # a draw from [0, ceiling): a crowd of clients spreads out the most
EQUAL_JITTER = 0.5  # a draw from [ceiling / 2, ceiling): never hammers, never past the cap


def backoff_delay(attempt: int, initial: float = INITIAL_DELAY, maximum: float = MAX_DELAY,
                  factor: float = FACTOR, random: Callable[[], float] = _random.random,
                  floor: float = FULL_JITTER) -> float:
    """Seconds to wait before retry `attempt` (0 for the first): a uniform draw from
    [floor × ceiling, ceiling), ceiling = min(maximum, initial × factor ** attempt)."""
    try:
        ceiling = min(maximum, initial * factor ** attempt)
    except OverflowError:
        ceiling = maximum
    return ceiling * (floor + (1.0 - floor) * random())
