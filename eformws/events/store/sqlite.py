"""The default event log: a SQLite file that survives restarts, with its epoch in the file.
Appends made while a write is in flight are batched into one transaction, delivered in seq
order once committed; all SQL runs off the reactor."""

from __future__ import annotations

import json
import sqlite3
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from eformws.events.store import (
    Appended,
    IdempotencyConflict,
    IEventStore,
    Position,
    bound,
    decoded,
    new_epoch,
    resumption,
    statistics,
    stored,
)

log = Logger(namespace="eformws.store.sqlite")


def create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(
        """
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            type TEXT NOT NULL,
            namespace TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            envelope TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS events_expires ON events (expires);
        CREATE INDEX IF NOT EXISTS events_created ON events (created);
        CREATE TABLE IF NOT EXISTS event_rooms (
            namespace TEXT NOT NULL,
            room TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (namespace, room, seq)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS event_rooms_seq ON event_rooms (seq);
        CREATE TABLE IF NOT EXISTS event_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT OR IGNORE INTO event_meta (key, value) VALUES ('low_water', 0);
        CREATE TABLE IF NOT EXISTS event_log (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS event_keys (
            digest TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            envelope TEXT NOT NULL,
            expires REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS event_keys_expires ON event_keys (expires);
        """
    )
    # The file's epoch: made once with the file, so a replaced or new file is a new log.
    connection.execute("INSERT OR IGNORE INTO event_log (key, value) VALUES ('epoch', ?)", (new_epoch(),))


def _epoch(connection) -> str:
    return connection.execute("SELECT value FROM event_log WHERE key = 'epoch'").fetchone()[0]


def _latest(connection) -> Position:
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return Position(_epoch(connection), row[0] if row else 0)


def _insert_batch(connection: sqlite3.Connection, batch: list) -> list:
    """One transaction for every queued append; per append, in the order given: the stored
    envelope and its creation time, or the earlier envelope of its idempotency key (as
    `Appended`), or an IdempotencyConflict."""
    results: list = []
    epoch = _epoch(connection)
    connection.execute("BEGIN IMMEDIATE")
    try:
        for envelope, addresses, created, expires, idempotency in batch:
            if idempotency is not None:
                prior = connection.execute(
                    "SELECT fingerprint, envelope FROM event_keys WHERE digest = ? AND expires > ?",
                    (idempotency.digest, created),
                ).fetchone()
                if prior is not None:
                    if prior[0] != idempotency.fingerprint:
                        results.append(IdempotencyConflict(idempotency.key))
                    else:
                        results.append(Appended(json.loads(prior[1]), replayed=True))
                    continue
            cursor = connection.execute(
                "INSERT INTO events (type, namespace, created, expires, envelope) VALUES (?, ?, ?, ?, ?)",
                (envelope["type"], envelope["namespace"], created, expires, json.dumps(envelope, separators=(",", ":"))),
            )
            seq = cursor.lastrowid
            connection.executemany(
                "INSERT OR IGNORE INTO event_rooms (namespace, room, seq) VALUES (?, ?, ?)",
                [(ns, room, seq) for ns, room in addresses],
            )
            entry = stored(envelope, Position(epoch, seq))
            if idempotency is not None:
                connection.execute(
                    "INSERT OR REPLACE INTO event_keys (digest, fingerprint, envelope, expires) VALUES (?, ?, ?, ?)",
                    (idempotency.digest, idempotency.fingerprint, json.dumps(entry, separators=(",", ":")),
                     created + idempotency.window),
                )
            results.append((entry, created))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return results


def _loaded(rows, epoch: str) -> list[dict]:
    """The envelopes of (seq, text) rows, each with its place in the log; bad ones left out."""
    found = []
    for seq, text in rows:
        envelope = decoded(text, seq)
        if envelope is not None:
            found.append(stored(envelope, Position(epoch, seq)))
    return found


def _room_clause(event_filter) -> tuple[str, list]:
    rooms = sorted(event_filter.rooms)
    placeholders = ",".join("?" * len(rooms))
    return (
        f"SELECT DISTINCT seq FROM event_rooms WHERE namespace = ? AND room IN ({placeholders})",
        [event_filter.namespace, *rooms],
    )


def _since(connection, cursor, epoch, event_filter, limit, upto):
    latest = _latest(connection)
    low_water = connection.execute("SELECT value FROM event_meta WHERE key = 'low_water'").fetchone()[0]
    clause, args = _room_clause(event_filter)
    upto_seq = bound(upto, latest)

    def matching_after(since, n):
        found: list[dict] = []
        while len(found) < n:  # more than once only when bad rows were left out
            wanted = n - len(found)
            rows = connection.execute(
                f"SELECT seq, envelope FROM events WHERE seq > ? AND seq <= ? AND seq IN ({clause}) ORDER BY seq LIMIT ?",
                [since, upto_seq, *args, wanted],
            ).fetchall()
            found.extend(_loaded(rows, latest.epoch))
            if len(rows) < wanted:
                break
            since = rows[-1][0]
        return found, True

    return resumption(cursor, epoch, latest, low_water, matching_after, limit)


def _recent(connection, event_filter, window, limit, now, upto):
    latest = _latest(connection)
    if event_filter is None:
        clause, args = "", []
    else:
        room_clause, args = _room_clause(event_filter)
        clause = f"AND seq IN ({room_clause})"
    rows = connection.execute(
        f"SELECT seq, envelope FROM events WHERE created >= ? AND expires > ? AND seq <= ? {clause} ORDER BY seq DESC LIMIT ?",
        [now - window, now, bound(upto, latest), *args, limit],
    ).fetchall()
    return _loaded(reversed(rows), latest.epoch)


def _delete_through(connection, condition: str, args: list) -> int:
    """Delete events matching `condition`, raising the low-water mark to the highest seq gone."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        highest = connection.execute(f"SELECT MAX(seq), COUNT(*) FROM events WHERE {condition}", args).fetchone()
        if highest[1]:
            connection.execute(f"DELETE FROM event_rooms WHERE seq IN (SELECT seq FROM events WHERE {condition})", args)
            connection.execute(f"DELETE FROM events WHERE {condition}", args)
            connection.execute(
                "UPDATE event_meta SET value = MAX(value, ?) WHERE key = 'low_water'", (highest[0],)
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return highest[1]


def _expire(connection, now, max_events):
    count = _delete_through(connection, "expires <= ?", [now])
    total = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if total > max_events:
        cutoff = connection.execute(
            "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_events,)
        ).fetchone()[0]
        count += _delete_through(connection, "seq <= ?", [cutoff])
    connection.execute("DELETE FROM event_keys WHERE expires <= ?", (now,))
    return count


def _stats(connection):
    total, oldest, newest = connection.execute("SELECT COUNT(*), MIN(created), MAX(created) FROM events").fetchone()
    by_namespace = dict(connection.execute("SELECT namespace, COUNT(*) FROM events GROUP BY namespace").fetchall())
    by_type = dict(connection.execute("SELECT type, COUNT(*) FROM events GROUP BY type").fetchall())
    return statistics(total, by_namespace, by_type, oldest, newest)


@implementer(IEventStore)
class SQLiteEventStore:
    def __init__(self, database, max_events: int = 100_000, clock=time.time):
        self._db = database
        self._max_events = max_events
        self._clock = clock
        self._queue: list[tuple[tuple, Deferred]] = []
        self._writing = False
        self._on_event = None
        database.add_schema(create_schema)

    # -- appends, batched, delivered once committed --------------------------------

    def append(self, envelope, addresses, ttl, idempotency=None):
        now = self._clock()
        d = Deferred()
        self._queue.append(((envelope, tuple(addresses), now, now + ttl, idempotency), d))
        if not self._writing:
            self._write_queued()
        return d

    def _write_queued(self):
        batch, self._queue = self._queue, []
        self._writing = True
        write = self._db.run(_insert_batch, [entry for entry, _ in batch])
        write.addBoth(self._written, batch)

    def _written(self, results, batch):
        self._writing = False
        if self._queue:
            self._write_queued()
        if not isinstance(results, list):
            for _, d in batch:
                d.errback(results)
            return
        for result in results:  # delivered in seq order before anyone hears of them
            if isinstance(result, tuple) and self._on_event is not None:
                try:
                    self._on_event(*result)
                except Exception:
                    log.failure("delivering an event failed")
        for result, (_, d) in zip(results, batch):
            if isinstance(result, Exception):
                d.errback(result)
            elif isinstance(result, Appended):
                d.callback(result)
            else:
                d.callback(Appended(result[0]))

    def follow(self, on_event, on_reset):
        self._on_event = on_event
        return self._db.run(_latest)

    # -- reads -------------------------------------------------------------------

    def since(self, cursor, epoch, event_filter, limit, upto=None):
        return self._db.run(_since, cursor, epoch, event_filter, limit, upto)

    def recent(self, event_filter, window, limit, now=None, upto=None):
        return self._db.run(_recent, event_filter, window, limit, self._clock() if now is None else now, upto)

    def expire(self, now=None):
        return self._db.run(_expire, self._clock() if now is None else now, self._max_events)

    def stats(self):
        return self._db.run(_stats)

    def ping(self):
        return self._db.run(lambda connection: connection.execute("SELECT 1").fetchone())
