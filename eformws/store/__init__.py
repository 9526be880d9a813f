"""The event-store seam: `IEventStore` (append with seq, since, recent, expire, stats) and
what every implementation shares: the address filter, cursor parsing, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from zope.interface import Interface

from eformws import wire


class IEventStore(Interface):
    def append(envelope, addresses, ttl):
        """Store envelope D (its `seq` None) with the (namespace, room) pairs it is addressed
        to, for `ttl` seconds; fire with a copy whose `seq` is filled in. Appends complete
        in the order they were made."""

    def since(cursor, event_filter, limit):
        """Fire with a `Resumption`: events after `cursor` that match, oldest first."""

    def recent(event_filter, window, limit, now=None):
        """Fire with the newest `limit` matching events of the last `window` seconds,
        oldest first (`event_filter` None: every event)."""

    def expire(now=None):
        """Delete expired events and those past the size cap; fire with the count."""

    def stats():
        """Fire with `event_statistics` (PROTOCOL.md section 7)."""

    def ping():
        """Fire when the store answers (for /healthz)."""

    def order_key(seq):
        """A comparable key for one of this store's seq strings (None if not one)."""


@dataclass(frozen=True)
class EventFilter:
    """What one connection would have received: its namespace and the rooms it is in."""

    namespace: str
    rooms: frozenset[str]

    def matches(self, addresses: Iterable[tuple[str, str]]) -> bool:
        return any(ns == self.namespace and room in self.rooms for ns, room in addresses)


@dataclass
class Resumption:
    """The answer to a resume: the missed events, whether nothing was lost, and the latest
    seq of the store when it answered."""

    events: list[dict] = field(default_factory=list)
    recovered: bool = False
    latest: str | None = None


def addresses_of(targets) -> list[tuple[str, str]]:
    """(namespace, room) pairs an event was addressed to."""
    return [(t.namespace, room) for t in targets for room in (t.rooms or ())]


def parse_cursor(cursor) -> int | None:
    """A seq cursor of this store's own form (a decimal string), else None."""
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        return cursor if cursor >= 0 else None
    if isinstance(cursor, str) and cursor.isascii() and cursor.isdigit() and len(cursor) <= 19:
        return int(cursor)
    return None


def resumption(since, latest, low_water, matching_after, limit: int, latest_text: str | None = None) -> Resumption:
    """The resume rule every store shares: `since` (an order key; None when the cursor was
    not one of ours) not ahead of `latest`, not behind `low_water` (the newest deleted),
    and at most `limit` events missed, or `recovered` is False."""
    latest_text = str(latest) if latest_text is None else latest_text
    if since is None or since > latest or since < low_water:
        return Resumption([], False, latest_text)
    events = matching_after(since, limit + 1)
    if len(events) > limit:
        return Resumption([], False, latest_text)
    return Resumption(events, True, latest_text)


def statistics(total, by_namespace, by_type, oldest, newest) -> dict:
    return {
        "total_events": total,
        "events_by_namespace": by_namespace,
        "events_by_type": by_type,
        "oldest_event": wire.js_timestamp(oldest) if oldest is not None else None,
        "newest_event": wire.js_timestamp(newest) if newest is not None else None,
    }
