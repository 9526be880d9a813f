"""The event-log seam: `IEventStore` (append with seq and epoch, follow in log order, since,
recent, expire, stats, ping) and what every implementation shares: positions, the address
filter, cursor parsing, idempotency keys, the resume rule, statistics."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from twisted.logger import Logger
from zope.interface import Interface

from eformws.core import wire

log = Logger(namespace="eformws.store")


class IEventStore(Interface):
    """The event log (with Redis, one for every process): the emit path
    (`WebSocketEvents`) appends, `EventFeed` follows, connections resume (`since`) and
    replay (`recent`), the sweep expires, /api/websocket/health reads `stats` and
    `recent`, /healthz `ping`s."""

    def append(envelope, addresses, ttl, idempotency=None):
        """Write a structured-event envelope (D; its `seq` and `epoch` None) to the log with
        the (namespace, room) pairs it is addressed to, kept `ttl` seconds; fire with an
        `Appended` once it is in the log that `follow` reads. With an `Idempotency` whose
        key was used within its window, nothing is written and the first envelope is the
        answer (`IdempotencyConflict` when it was used for another event)."""

    def follow(on_event, on_reset):
        """From now on, call `on_event(envelope, created)` for every event of the log,
        whichever process appended it, exactly once and in seq order; `on_reset(position,
        why)` when this process cannot go on in order (the log was reset: a new epoch,
        or events were removed before it read them). Fires with the `Position` the log
        had when following began (None while the store cannot say)."""

    def since(cursor, epoch, event_filter, limit, upto=None):
        """Fire with a `Resumption`: the first `limit` matching events after `cursor` up to
        the `Position` `upto` (None: the newest), oldest first, `more` when others follow
        them; or `recovered` False when the log no longer has all of them."""

    def recent(event_filter, window, limit, now=None, upto=None):
        """Fire with the newest `limit` matching events of the last `window` seconds up to
        `upto`, oldest first (`event_filter` None: every event)."""

    def expire(now=None):
        """Delete expired events and those past the size cap; fire with the count."""

    def stats():
        """Fire with `event_statistics` (docs/events.md)."""

    def ping():
        """Fire when the store answers and takes writes (for /healthz)."""


@dataclass(frozen=True)
class Position:
    """A place in one event log: its epoch and a seq of it (0: before its first event).
    Seqs of one epoch are consecutive integers; another epoch is another log."""

    epoch: str
    seq: int


def new_epoch() -> str:
    """A random name for a new log (16 hex digits)."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Idempotency:
    """A producer's `Idempotency-Key`, a fingerprint of what it sent, and how long the key
    is remembered."""

    key: str
    fingerprint: str
    window: float

    @property
    def digest(self) -> str:
        """The key as stores keep it: its SHA-256, so any text makes a safe, bounded key."""
        return hashlib.sha256(self.key.encode("utf-8")).hexdigest()


def fingerprint(event_type: Any, data: Any) -> str:
    """The same request gives the same text whatever its key order."""
    text = json.dumps([event_type, data], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class IdempotencyConflict(Exception):
    """An Idempotency-Key used again, within its window, for a different event."""


@dataclass
class Appended:
    """What an append did: the envelope as stored (with `seq` and `epoch`), and whether it
    was stored by an earlier request with the same idempotency key."""

    envelope: dict
    replayed: bool = False


@dataclass(frozen=True)
class EventFilter:
    """What one connection would have received: its namespace and the rooms it is in."""

    namespace: str
    rooms: frozenset[str]

    def matches(self, addresses: Iterable[tuple[str, str]]) -> bool:
        return any(ns == self.namespace and room in self.rooms for ns, room in addresses)


@dataclass
class Resumption:
    """The answer to a resume (or one batch of it): the missed events and whether nothing
    was lost; `latest` says where the log stood, `more` that matching events follow these."""

    events: list[dict] = field(default_factory=list)
    recovered: bool = False
    latest: Position | None = None
    more: bool = False


def addresses_of(targets) -> list[tuple[str, str]]:
    """(namespace, room) pairs an event was addressed to."""
    return [(t.namespace, room) for t in targets for room in (t.rooms or ())]


def parse_cursor(cursor) -> int | None:
    """A seq of a log (a decimal string or an integer), else None."""
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        return cursor if 0 <= cursor < 1 << 63 else None
    if isinstance(cursor, str) and cursor.isascii() and cursor.isdigit() and len(cursor) <= 18:
        return int(cursor)
    return None


def log_position(envelope: dict) -> Position | None:
    """Where a delivered envelope sits in the log (None: not a structured event)."""
    seq = envelope.get("seq")
    if seq is None:
        return None
    return Position(envelope.get("epoch"), parse_cursor(seq))


def decoded(text, seq) -> dict | None:
    """A stored envelope's JSON text as the envelope, or None (logged, with its seq) when
    it is not one that can be sent (not JSON, not an object, data nested deeper than
    `wire.MAX_DEPTH`): one bad entry, written by an older version or by hand, never fails
    a read of the log, it is left out."""
    try:
        envelope = json.loads(text)
        # The envelope is one level above its data, which may be MAX_DEPTH deep.
        deepest = wire.MAX_DEPTH + 1
        if not isinstance(envelope, dict) or (wire.may_nest_deeper_than(text, deepest)
                                              and wire.nested_deeper_than(envelope, deepest)):
            envelope = None
    except (TypeError, ValueError, RecursionError):
        envelope = None
    if envelope is None:
        log.warn("left out event {seq} of the log: it is not an event that can be sent", seq=seq)
    return envelope


def stored(envelope: dict, position: Position) -> dict:
    """A copy of `envelope` carrying its place in the log."""
    out = dict(envelope)
    out["seq"] = str(position.seq)
    out["epoch"] = position.epoch
    return out


def bound(upto: Position | None, latest: Position) -> int:
    """The highest seq a query may answer: `upto` when it is of the log's epoch (what this
    process has delivered), else the log's newest."""
    if upto is None or upto.epoch != latest.epoch:
        return latest.seq
    return min(upto.seq, latest.seq)


def resumption(cursor, epoch, latest: Position, low_water: int, matching_after, limit: int) -> Resumption:
    """The resume rule every store shares. Recovered when the cursor is a seq of this log
    (its epoch, when given, is the log's), not ahead of it, not behind `low_water` (the
    newest seq deleted) and the log still has every event after it; the first `limit`
    of them answered, `more` saying whether others follow."""
    since = parse_cursor(cursor)
    if since is None or (epoch is not None and epoch != latest.epoch) or since > latest.seq or since < low_water:
        return Resumption([], False, latest)
    events, complete = matching_after(since, limit + 1)
    if not complete:
        return Resumption([], False, latest)
    return Resumption(events[:limit], True, latest, len(events) > limit)


def statistics(total, by_namespace, by_type, oldest, newest) -> dict:
    return {
        "total_events": total,
        "events_by_namespace": by_namespace,
        "events_by_type": by_type,
        "oldest_event": wire.js_timestamp(oldest) if oldest is not None else None,
        "newest_event": wire.js_timestamp(newest) if newest is not None else None,
    }
