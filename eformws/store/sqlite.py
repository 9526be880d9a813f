"""The default event store: a SQLite file that survives restarts. Appends made while a
write is in flight are batched into one transaction; all SQL runs off the reactor."""

from __future__ import annotations

import json
import sqlite3
import time

from twisted.internet.defer import Deferred
from zope.interface import implementer

from eformws.store import IEventStore, parse_cursor, resumption, statistics


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
        """
    )


def _insert_batch(connection: sqlite3.Connection, batch: list) -> list[int]:
    """One transaction for every queued append; the seqs in the order given."""
    seqs = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        for envelope, addresses, created, expires in batch:
            cursor = connection.execute(
                "INSERT INTO events (type, namespace, created, expires, envelope) VALUES (?, ?, ?, ?, ?)",
                (envelope["type"], envelope["namespace"], created, expires, json.dumps(envelope, separators=(",", ":"))),
            )
            seq = cursor.lastrowid
            connection.executemany(
                "INSERT OR IGNORE INTO event_rooms (namespace, room, seq) VALUES (?, ?, ?)",
                [(ns, room, seq) for ns, room in addresses],
            )
            seqs.append(seq)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return seqs


def _load(seq: int, text: str) -> dict:
    envelope = json.loads(text)
    envelope["seq"] = str(seq)
    return envelope


def _room_clause(event_filter) -> tuple[str, list]:
    rooms = sorted(event_filter.rooms)
    placeholders = ",".join("?" * len(rooms))
    return (
        f"SELECT DISTINCT seq FROM event_rooms WHERE namespace = ? AND room IN ({placeholders})",
        [event_filter.namespace, *rooms],
    )


def _latest_and_low_water(connection) -> tuple[int, int]:
    latest = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    low = connection.execute("SELECT value FROM event_meta WHERE key = 'low_water'").fetchone()
    return (latest[0] if latest else 0), low[0]


def _since(connection, cursor, event_filter, limit):
    latest, low_water = _latest_and_low_water(connection)
    clause, args = _room_clause(event_filter)

    def matching_after(since, n):
        rows = connection.execute(
            f"SELECT seq, envelope FROM events WHERE seq > ? AND seq IN ({clause}) ORDER BY seq LIMIT ?",
            [since, *args, n],
        ).fetchall()
        return [_load(seq, text) for seq, text in rows]

    return resumption(parse_cursor(cursor), latest, low_water, matching_after, limit)


def _recent(connection, event_filter, window, limit, now):
    if event_filter is None:
        clause, args = "", []
    else:
        room_clause, args = _room_clause(event_filter)
        clause = f"AND seq IN ({room_clause})"
    rows = connection.execute(
        f"SELECT seq, envelope FROM events WHERE created >= ? {clause} ORDER BY seq DESC LIMIT ?",
        [now - window, *args, limit],
    ).fetchall()
    return [_load(seq, text) for seq, text in reversed(rows)]


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
        database.add_schema(create_schema)

    # -- appends, batched --------------------------------------------------------

    def append(self, envelope, addresses, ttl):
        now = self._clock()
        d = Deferred()
        self._queue.append(((envelope, tuple(addresses), now, now + ttl), d))
        if not self._writing:
            self._write_queued()
        return d

    def _write_queued(self):
        batch, self._queue = self._queue, []
        self._writing = True
        write = self._db.run(_insert_batch, [entry for entry, _ in batch])
        write.addBoth(self._written, batch)

    def _written(self, result, batch):
        self._writing = False
        if self._queue:
            self._write_queued()
        for index, (entry, d) in enumerate(batch):
            if isinstance(result, list):
                stored = dict(entry[0])
                stored["seq"] = str(result[index])
                d.callback(stored)
            else:
                d.errback(result)

    # -- reads -------------------------------------------------------------------

    def since(self, cursor, event_filter, limit):
        return self._db.run(_since, cursor, event_filter, limit)

    def recent(self, event_filter, window, limit, now=None):
        return self._db.run(_recent, event_filter, window, limit, self._clock() if now is None else now)

    def expire(self, now=None):
        return self._db.run(_expire, self._clock() if now is None else now, self._max_events)

    def stats(self):
        return self._db.run(_stats)

    def order_key(self, seq):
        return parse_cursor(seq)

    def ping(self):
        return self._db.run(lambda connection: connection.execute("SELECT 1").fetchone())

