"""Catching up many connections at once: the newest events for one filter asked of the store
once per burst of connects, and each stored event framed once per audience, not per client."""

from __future__ import annotations

import time
from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from eformws.core import wire
from eformws.core.compat import Frame, frame_bytes
from eformws.events.store import log_position

log = Logger(namespace="eformws.replay")


class RecentEvents:
    """`recent(filter, upto)` (upto: this process's position by default), as the store
    answers it, shared: an answer (or a query in flight) is reused for the same filter and
    position (no structured event delivered since) for at most `max_age` seconds, so a
    reconnect storm costs one query per filter."""

    def __init__(self, store, hub, window: float, limit: int, max_age: float = 1.0, clock=time.monotonic):
        self.store = store
        self.hub = hub
        self.window = window
        self.limit = limit
        self.max_age = max_age
        self._clock = clock
        self._entries: dict = {}  # filter -> (position, asked at, answer or None, waiters)

    MAX_ENTRIES = 256  # distinct filters answered within `max_age`: more are asked of the store again

    def _forget_old(self, now: float) -> None:
        """Answers older than `max_age` are of no more use (they would not be reused): drop
        them, so what a client's filter cost is freed a second after it, and at most
        MAX_ENTRIES answers are kept even in a storm of distinct filters."""
        for key in [key for key, entry in self._entries.items()
                    if now - entry[1] >= self.max_age and entry[3] is None]:
            del self._entries[key]
        while len(self._entries) >= self.MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]

    def recent(self, event_filter, upto=None) -> Deferred:
        now = self._clock()
        entry = self._entries.get(event_filter)
        position = self.hub.position if upto is None else upto
        if entry is not None and entry[0] == position and now - entry[1] < self.max_age:
            if entry[3] is None:
                return succeed(entry[2])
            waiter = Deferred()
            entry[3].append(waiter)
            return waiter
        self._forget_old(now)
        waiters: list[Deferred] = []
        entry = [position, now, None, waiters]
        self._entries[event_filter] = entry
        d = self.store.recent(event_filter, self.window, self.limit, None, position)

        def answered(events):
            entry[2], entry[3] = events, None
            for waiter in waiters:
                waiter.callback(events)
            return events

        def failed(failure):
            if self._entries.get(event_filter) is entry:
                del self._entries[event_filter]
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        d.addCallbacks(answered, failed)
        return d


class EventFrames:
    """Frames of stored events for replay and resume, by event id and audience; the newest
    `size` kept, at most `max_bytes` of them. An envelope is immutable once stored, so its frame never goes stale."""

    def __init__(self, redactor, size: int = 4096, max_bytes: int = 16 * 1024 * 1024):
        self.redactor = redactor
        self.size = size
        self.max_bytes = max_bytes  # events may be up to 64 KiB each: the bytes are bounded too
        self._frames: OrderedDict = OrderedDict()
        self._bytes = 0

    def frame(self, envelope: dict, sees_sensitive: bool, framing=None) -> Frame | None:
        """The frame of a stored event for one audience and framing (one with a
        `frame(payload, binary, position)`, e.g. deflating; None: plain); None (logged) for
        one that cannot be framed, so that one bad event never stops a catch-up."""
        key = (envelope.get("id"), envelope.get("seq"), sees_sensitive, framing)
        frame = self._frames.get(key)
        if frame is None:
            view = envelope if sees_sensitive else self.redactor.redact(envelope)
            try:
                payload = wire.dumps(view)
            except (TypeError, ValueError, RecursionError):
                log.warn("left out event {seq}: it cannot be framed", seq=envelope.get("seq"))
                return None
            position = log_position(envelope)
            frame = Frame(payload, False, position) if framing is None else framing.frame(payload, False, position)
            self._frames[key] = frame
            self._bytes += len(frame_bytes(frame))
            while len(self._frames) > self.size or self._bytes > self.max_bytes:
                self._bytes -= len(frame_bytes(self._frames.popitem(last=False)[1]))
        return frame
