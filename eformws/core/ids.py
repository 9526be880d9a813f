"""Random identifiers (UUID version 4 text, for events and connections) drawn from the
system's random source 4 KiB at a time: no system call (and no GIL hand-off) for each."""

from __future__ import annotations

import os
import threading

_POOL_BYTES = 4096
_lock = threading.Lock()
_pool = b""
_at = 0


def uuid4() -> str:
    """What `str(uuid.uuid4())` gives: 122 bits from os.urandom, version 4, RFC 4122 variant."""
    global _pool, _at
    with _lock:
        if _at + 16 > len(_pool):
            _pool, _at = os.urandom(_POOL_BYTES), 0
        value = int.from_bytes(_pool[_at:_at + 16], "big")
        _at += 16
    value = value & ~(0xF000 << 64) | (0x4000 << 64)  # version 4
    value = value & ~(0xC000 << 48) | (0x8000 << 48)  # RFC 4122 variant
    text = "%032x" % value
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
