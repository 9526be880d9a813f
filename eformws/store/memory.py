"""An event store in this process's memory: the same semantics as the SQLite store,
nothing survives a restart; for tests and deployments that do not need history."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

from twisted.internet.defer import succeed
from zope.interface import implementer

from eformws.store import IEventStore, parse_cursor, resumption, statistics


@implementer(IEventStore)
class MemoryEventStore:
    def __init__(self, max_events: int = 100_000, clock=time.time):
        self._max_events = max_events
        self._clock = clock
        self._events: OrderedDict[int, tuple[dict, frozenset, float, float]] = OrderedDict()
        self._seq = 0
        self._low_water = 0

    def append(self, envelope, addresses, ttl):
        self._seq += 1
        stored = dict(envelope)
        stored["seq"] = str(self._seq)
        now = self._clock()
        self._events[self._seq] = (stored, frozenset(addresses), now, now + ttl)
        while len(self._events) > self._max_events:
            seq, _ = self._events.popitem(last=False)
            self._low_water = max(self._low_water, seq)
        return succeed(stored)

    def _matching_after(self, event_filter, since, limit):
        found = []
        for seq, (envelope, addresses, _, _) in self._events.items():
            if seq > since and event_filter.matches(addresses):
                found.append(envelope)
                if len(found) >= limit:
                    break
        return found

    def since(self, cursor, event_filter, limit):
        return succeed(
            resumption(
                parse_cursor(cursor),
                self._seq,
                self._low_water,
                lambda since, n: self._matching_after(event_filter, since, n),
                limit,
            )
        )

    def recent(self, event_filter, window, limit, now=None):
        now = self._clock() if now is None else now
        found = []
        for envelope, addresses, created, _ in reversed(self._events.values()):
            if created < now - window or len(found) >= limit:
                break
            if event_filter is None or event_filter.matches(addresses):
                found.append(envelope)
        return succeed(found[::-1])

    def expire(self, now=None):
        now = self._clock() if now is None else now
        expired = [seq for seq, (_, _, _, expires) in self._events.items() if expires <= now]
        for seq in expired:
            del self._events[seq]
            self._low_water = max(self._low_water, seq)
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

    def order_key(self, seq):
        return parse_cursor(seq)

    def ping(self):
        return succeed(None)
