"""The shared event store of several processes: one capped Redis Stream whose entry ids are
the seqs, so replay and resume work whichever process a client reconnects to."""

from __future__ import annotations

import json
import time
from collections import Counter, deque

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from eformws.redis import RedisConnection, RedisUnavailable
from eformws.store import IEventStore, resumption, statistics

log = Logger(namespace="eformws.store.redis")

SCAN_BATCH = 500


def stream_id_key(seq) -> tuple[int, int] | None:
    """Order key of a Redis Stream id `<ms>-<n>`; None for anything else."""
    if not isinstance(seq, str) or not seq.isascii():
        return None
    ms, sep, n = seq.partition("-")
    if not sep or not ms.isdigit() or not n.isdigit() or len(ms) > 20 or len(n) > 20:
        return None
    return int(ms), int(n)


def _fields(flat) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def _entry(entry_id: str, flat) -> tuple[dict, list, float, float]:
    fields = _fields(flat)
    envelope = json.loads(fields["e"])
    envelope["seq"] = entry_id
    return envelope, [tuple(a) for a in json.loads(fields["a"])], float(fields["c"]), float(fields["x"])


def _after(entry_id: str) -> str:
    return "(" + entry_id


@implementer(IEventStore)
class RedisEventStore(MultiService):
    """Appends wait in order (bounded by `buffer_size`) while Redis is unreachable and are
    written when it is back; past the bound they fail with RedisUnavailable."""

    def __init__(self, address, prefix: str, max_events: int, buffer_size: int,
                 initial_delay: float = 0.5, max_delay: float = 10.0, clock=time.time):
        super().__init__()
        self.key = f"{prefix}events"
        self.max_events = max_events
        self.buffer_size = buffer_size
        self._clock = clock
        self.connection = RedisConnection(address, "event store", initial_delay, max_delay)
        self.connection.setServiceParent(self)
        self.connection.on_connected.append(lambda _: self._write_queued())
        self._queue: deque = deque()
        self._writing = False

    def order_key(self, seq):
        return stream_id_key(seq)

    # -- appends -------------------------------------------------------------------

    def append(self, envelope, addresses, ttl):
        if len(self._queue) >= self.buffer_size:
            return fail(RedisUnavailable("event store: redis unreachable and the outage buffer is full"))
        now = self._clock()
        d = Deferred()
        self._queue.append((envelope, list(addresses), now, now + ttl, d))
        self._write_queued()
        return d

    @inlineCallbacks
    def _write_queued(self):
        if self._writing:
            return
        self._writing = True
        try:
            while self._queue and self.connection.connected:
                envelope, addresses, created, expires, d = self._queue[0]
                stored = dict(envelope)
                stored["seq"] = None
                try:
                    entry_id = yield self.connection.command(
                        "XADD", self.key, "MAXLEN", "~", self.max_events, "*",
                        "e", json.dumps(stored, separators=(",", ":")),
                        "a", json.dumps(addresses, separators=(",", ":")),
                        "c", repr(created), "x", repr(expires),
                    )
                except Exception as e:
                    log.warn("event store write failed ({error}); {n} events wait for redis",
                             error=type(e).__name__, n=len(self._queue))
                    return
                self._queue.popleft()
                stored["seq"] = entry_id
                d.callback(stored)
        finally:
            self._writing = False

    # -- reads ---------------------------------------------------------------------

    @inlineCallbacks
    def _latest_and_low_water(self):
        info = yield self.connection.command("XINFO", "STREAM", self.key)
        info = _fields(info)
        return info.get("last-generated-id", "0-0"), info.get("max-deleted-entry-id", "0-0")

    @inlineCallbacks
    def since(self, cursor, event_filter, limit):
        try:
            latest, low_water = yield self._latest_and_low_water()
        except Exception as e:
            if "no such key" not in str(e).lower():
                raise
            latest, low_water = "0-0", "0-0"
        now = self._clock()
        since = stream_id_key(cursor)
        found: list = []
        lost = False
        if since is not None and since <= stream_id_key(latest):
            start = _after(cursor)
            while len(found) <= limit:
                batch = yield self.connection.command("XRANGE", self.key, start, "+", "COUNT", SCAN_BATCH)
                for entry_id, flat in batch:
                    envelope, addresses, _, expires = _entry(entry_id, flat)
                    if event_filter.matches(addresses):
                        if expires <= now:
                            lost = True  # expired by its type's TTL: the client missed it
                        else:
                            found.append(envelope)
                if len(batch) < SCAN_BATCH:
                    break
                start = _after(batch[-1][0])
        if lost:
            low_water = latest
        return resumption(since, stream_id_key(latest), stream_id_key(low_water), lambda s, n: found[:n], limit, latest)

    @inlineCallbacks
    def recent(self, event_filter, window, limit, now=None):
        now = self._clock() if now is None else now
        oldest_ms = int((now - window) * 1000)
        found: list = []
        end = "+"
        while len(found) < limit:
            batch = yield self.connection.command("XREVRANGE", self.key, end, oldest_ms, "COUNT", SCAN_BATCH)
            for entry_id, flat in batch:
                envelope, addresses, created, expires = _entry(entry_id, flat)
                if expires > now and created >= now - window and (event_filter is None or event_filter.matches(addresses)):
                    found.append(envelope)
                    if len(found) >= limit:
                        break
            if len(batch) < SCAN_BATCH:
                break
            end = _after(batch[-1][0])
        return found[::-1]

    @inlineCallbacks
    def _scan(self):
        """Every live entry, oldest first, in batches (for expiry and statistics)."""
        entries = []
        start = "-"
        while True:
            batch = yield self.connection.command("XRANGE", self.key, start, "+", "COUNT", SCAN_BATCH)
            entries.extend(batch)
            if len(batch) < SCAN_BATCH:
                return entries
            start = _after(batch[-1][0])

    @inlineCallbacks
    def expire(self, now=None):
        now = self._clock() if now is None else now
        expired = [entry_id for entry_id, flat in (yield self._scan()) if float(_fields(flat)["x"]) <= now]
        for start in range(0, len(expired), SCAN_BATCH):
            yield self.connection.command("XDEL", self.key, *expired[start:start + SCAN_BATCH])
        return len(expired)

    @inlineCallbacks
    def stats(self):
        now = self._clock()
        live = [_entry(i, f) for i, f in (yield self._scan())]
        live = [(e, c) for e, _, c, x in live if x > now]
        return statistics(
            len(live),
            dict(Counter(e["namespace"] for e, _ in live)),
            dict(Counter(e["type"] for e, _ in live)),
            live[0][1] if live else None,
            live[-1][1] if live else None,
        )

    def ping(self):
        return self.connection.command("PING")
