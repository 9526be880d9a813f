"""Flow control toward one peer: how many bytes a connection has written that the peer has
not taken yet, the slow-consumer rule (close 1013 past a bound) and pacing built on it."""

from __future__ import annotations

import fcntl
import struct
import termios

from twisted.internet.defer import Deferred

from eformws.core.compat import twisted_write_buffer

SLOW_CONSUMER = "Slow consumer"


def unsent_bytes(transport) -> int:
    """Bytes written to a Twisted TCP transport that the peer has not acknowledged: those
    in Twisted's buffer plus those in the kernel's send queue (Linux `SIOCOUTQ`), which
    alone may hold megabytes for a peer that stopped reading."""
    if transport is None or not hasattr(transport, "fileno"):
        return 0  # gone, or a test's transport without a socket
    total = twisted_write_buffer(transport)  # a socket without Twisted's buffer: compat is out of date, fail
    try:
        queued = fcntl.ioctl(transport.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        total += struct.unpack("i", queued)[0]
    except (AttributeError, OSError, ValueError):
        pass  # the socket is closed (Twisted drops it then), or not Linux: Twisted's buffer alone
    return total


class SlowConsumerGuard:
    """Watches one connection's writes: once more than `limit` bytes wait for the peer, the
    connection is to be closed with 1013 and sent nothing more, so a stalled reader costs
    at most about 1.25 × `limit` plus one message. The backlog is measured (a system call)
    only after each quarter of `limit` written, never per message."""

    __slots__ = ("limit", "tripped", "_unchecked")

    def __init__(self, limit: int):
        self.limit = limit
        self.tripped = False
        self._unchecked = 0

    def wrote(self, transport, size: int) -> bool:
        """Count `size` bytes written; True once, when the backlog is found over the limit."""
        self._unchecked += size
        if self.tripped or self._unchecked < self.limit >> 2:
            return False
        self._unchecked = 0
        if unsent_bytes(transport) > self.limit:
            self.tripped = True
            return True
        return False


def when_drained(transport, low_water: int, clock, first_wait: float = 0.002, longest_wait: float = 0.1) -> Deferred:
    """A Deferred that fires once at most `low_water` bytes wait for the peer (Twisted's buffer
    and the kernel's), looking again after a wait that doubles up to `longest_wait`: the pace
    of a peer that reads, for writers that must not outrun it (catch-up). It fires (with
    False) as well when the transport is gone, so a writer always learns to stop."""
    done = Deferred()
    wait = first_wait

    def look():
        nonlocal wait
        if transport is None or getattr(transport, "disconnected", False):
            done.callback(False)
        elif unsent_bytes(transport) <= low_water:
            done.callback(True)
        else:
            clock.callLater(wait, look)
            wait = min(wait * 2, longest_wait)

    look()
    return done
