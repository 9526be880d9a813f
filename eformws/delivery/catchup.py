"""Catch-up written at the pace the client reads: stored events framed and written in bursts,
the next burst only once the peer has taken most of the last, however far behind it is."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from eformws.core.compat import frame_bytes
from eformws.core.slow_consumer import unsent_bytes, when_drained


class PacedWriter:
    """Writes stored events to one connection at a time without outrunning it: after each
    `step` bytes, when more than half of `limit` (the slow-consumer bound) waits for the
    peer, it waits until no more than a quarter does; else it lets the reactor run other
    work first. So a catch-up never trips the bound, and live traffic keeps its room."""

    def __init__(self, frames, limit: int, clock):
        self.frames = frames
        self.clock = clock
        self.limit = limit
        self.step = max(4096, min(65536, limit // 4))
        self.high = limit // 2
        self.low = limit // 4

    @inlineCallbacks
    def write(self, connection, envelopes):
        """Write the frames of `envelopes` in order; fire with how many were written and
        their bytes, or None once the connection cannot take more (gone, closing, a slow
        consumer)."""
        written = burst = size = 0
        for envelope in envelopes:
            if not connection.writable:
                return None
            frame = self.frames.frame(envelope, connection.sees_sensitive, connection.framing)
            if frame is None:
                continue  # an event that cannot be sent (logged): left out
            connection.write_frame(frame)
            written += 1
            burst += len(frame_bytes(frame))
            size += len(frame_bytes(frame))
            if burst >= self.step:
                burst = 0
                if unsent_bytes(connection.transport) > self.high:
                    if not (yield when_drained(connection.transport, self.low, self.clock)):
                        return None
                else:
                    yield deferLater(self.clock, 0, lambda: None)
        return (written, size) if connection.writable else None

    def batch_after(self, written: int, size: int, largest: int) -> int:
        """How many events to ask the store for next: about `limit` bytes of them at the
        size the last ones had (events are up to 64 KiB each: a batch of a fixed count
        could hold tens of MiB for one client), at most `largest`."""
        if not written:
            return largest
        return max(1, min(largest, self.limit * written // max(size, 1)))
