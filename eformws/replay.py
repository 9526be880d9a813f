"""Catching up many connections at once: the newest events for one filter asked of the store
once per burst of connects, and each stored event framed once per audience, not per client."""

from __future__ import annotations

import time
from collections import OrderedDict

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from eformws import wire
from eformws.store import log_position

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
        if len(self._entries) > 1000:
            self._entries.clear()
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
    `size` kept. An envelope is immutable once stored, so its frame never goes stale."""

    def __init__(self, redactor, size: int = 4096):
        self.redactor = redactor
        self.size = size
        self._frames: OrderedDict = OrderedDict()

    def frame(self, envelope: dict, sees_sensitive: bool) -> PreparedMessage | None:
        """The frame of a stored event for one audience; None (logged) for one that cannot be
        framed, so that one bad event never stops a catch-up."""
        key = (envelope.get("id"), envelope.get("seq"), sees_sensitive)
        frame = self._frames.get(key)
        if frame is None:
            view = envelope if sees_sensitive else self.redactor.redact(envelope)
            try:
                payload = wire.dumps(view)
            except (TypeError, ValueError, RecursionError):
                log.warn("left out event {seq}: it cannot be framed", seq=envelope.get("seq"))
                return None
            frame = PreparedMessage(payload, False, False, True)
            frame.position = log_position(envelope)
            self._frames[key] = frame
            if len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame
