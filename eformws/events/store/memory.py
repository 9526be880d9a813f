"""An event log in this process's memory: the same semantics as the SQLite store, nothing
survives a restart (every start is a new epoch); for tests and deployments without history."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from eformws.events.store import (
    Appended,
    IdempotencyConflict,
    IEventStore,
    Position,
    bound,
    new_epoch,
    resumption,
    statistics,
    stored,
)

log = Logger(namespace="eformws.store.memory")


@implementer(IEventStore)
class MemoryEventStore:
    def __init__(self, max_events: int = 100_000, clock=time.time):
        self._max_events = max_events
        self._clock = clock
        self.epoch = new_epoch()
        self._events: OrderedDict[int, tuple[dict, frozenset, float, float]] = OrderedDict()
        self._keys: dict[str, tuple[str, dict, float]] = {}  # digest -> (fingerprint, envelope, expires)
        self._seq = 0
        self._low_water = 0
        self._on_event = None

    @property
    def latest(self) -> Position:
        return Position(self.epoch, self._seq)

    def append(self, envelope, addresses, ttl, idempotency=None):
        now = self._clock()
        if idempotency is not None:
            prior = self._keys.get(idempotency.digest)
            if prior is not None and prior[2] > now:
                if prior[0] != idempotency.fingerprint:
                    return fail(IdempotencyConflict(idempotency.key))
                return succeed(Appended(prior[1], replayed=True))
        self._seq += 1
        entry = stored(envelope, self.latest)
        self._events[self._seq] = (entry, frozenset(addresses), now, now + ttl)
        if idempotency is not None:
            self._keys[idempotency.digest] = (idempotency.fingerprint, entry, now + idempotency.window)
        while len(self._events) > self._max_events:
            seq, _ = self._events.popitem(last=False)
            self._low_water = max(self._low_water, seq)
        if self._on_event is not None:
            try:
                self._on_event(entry, now)
            except Exception:
                log.failure("delivering an event failed")
        return succeed(Appended(entry))

    def follow(self, on_event, on_reset):
        self._on_event = on_event
        return succeed(self.latest)

    def _matching_after(self, event_filter, since, upto, limit):
        found = []
        for seq, (envelope, addresses, _, _) in self._events.items():
            if seq > upto:
                break
            if seq > since and event_filter.matches(addresses):
                found.append(envelope)
                if len(found) >= limit:
                    break
        return found, True

    def since(self, cursor, epoch, event_filter, limit, upto=None):
        latest = self.latest
        upto_seq = bound(upto, latest)
        return succeed(
            resumption(
                cursor, epoch, latest, self._low_water,
                lambda since, n: self._matching_after(event_filter, since, upto_seq, n), limit,
            )
        )

    def recent(self, event_filter, window, limit, now=None, upto=None):
        now = self._clock() if now is None else now
        upto_seq = bound(upto, self.latest)
        found = []
        for seq in reversed(self._events):
            envelope, addresses, created, expires = self._events[seq]
            if seq > upto_seq:
                continue
            if created < now - window or len(found) >= limit:
                break
            if expires > now and (event_filter is None or event_filter.matches(addresses)):
                found.append(envelope)
        return succeed(found[::-1])

    def expire(self, now=None):
        now = self._clock() if now is None else now
        expired = [seq for seq, (_, _, _, expires) in self._events.items() if expires <= now]
        for seq in expired:
            del self._events[seq]
            self._low_water = max(self._low_water, seq)
        for digest in [d for d, (_, _, expires) in self._keys.items() if expires <= now]:
            del self._keys[digest]
        return succeed(len(expired))

    def stats(self):
        values = list(self._events.values())
        return succeed(
            statistics(
                len(values),
                dict(Counter(e["namespace"] for e, *_ in values)),
                dict(Counter(e["type"] for e, *_ in values)),
                values[0][2] if values else None,
                values[-1][2] if values else None,
            )
        )

    def ping(self):
        return succeed(None)
