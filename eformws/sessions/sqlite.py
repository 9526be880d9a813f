"""The embedded session store: one SQLite table keyed by the SHA-256 of each session id,
shared by the server (lookups off the reactor) and the `eformws sessions` command."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from zope.interface import implementer

from eformws.core.wampcra import id_hash
from eformws.sessions import (
    REF_LENGTH,
    ISessionAdmin,
    ISessionStore,
    Session,
    check_new_session,
    is_id_hash,
    new_session_id,
)

MAX_SESSION_ID_LENGTH = 512


def create_schema(connection: sqlite3.Connection) -> None:
    connection.execute(
        "CREATE TABLE IF NOT EXISTS sessions ("
        " id_hash TEXT PRIMARY KEY,"
        " user_id TEXT NOT NULL,"
        " role TEXT NOT NULL,"
        " kiosk_id TEXT,"
        " created_at REAL NOT NULL,"
        " expires_at REAL NOT NULL,"
        " revoked INTEGER NOT NULL DEFAULT 0)"
    )


def reference(session_id: str) -> str:
    """The reference `sessions list` shows for a session id (a prefix of its hash)."""
    return id_hash(session_id)[:REF_LENGTH]


@dataclass(frozen=True)
class SessionRow:
    """What `sessions list` shows: a reference (hash prefix), never the id itself."""

    ref: str
    user_id: str
    role: str
    kiosk_id: str | None
    created_at: float
    expires_at: float
    revoked: bool

    def state(self, now: float) -> str:
        """`revoked`, else `expired` once `expires_at` has come, else `live`."""
        return "revoked" if self.revoked else ("expired" if self.expires_at <= now else "live")


ROW_COLUMNS = "id_hash, user_id, role, kiosk_id, created_at, expires_at, revoked"


def _row(r) -> SessionRow:
    """A SessionRow of the ROW_COLUMNS of a row."""
    return SessionRow(r[0][:REF_LENGTH], r[1], r[2], r[3], r[4], r[5], bool(r[6]))


def create_session(
    connection: sqlite3.Connection,
    user_id: str,
    role: str,
    kiosk_id: str | None,
    ttl: float,
    now: float | None = None,
) -> Session:
    check_new_session(user_id, role, ttl, kiosk_id)
    now = time.time() if now is None else now
    session_id = new_session_id()
    create_schema(connection)
    connection.execute(
        "INSERT INTO sessions (id_hash, user_id, role, kiosk_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (id_hash(session_id), user_id, role, kiosk_id, now, now + ttl),
    )
    return Session(session_id, user_id, role, kiosk_id, now + ttl)


def lookup_session(connection: sqlite3.Connection, session_id: str, now: float | None = None):
    if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        return None
    return _live(connection, id_hash(session_id), session_id, now)


def lookup_session_hash(connection: sqlite3.Connection, hashed: str, now: float | None = None):
    """The live session whose id has this hash (its `id` None), else None."""
    return _live(connection, hashed, None, now) if is_id_hash(hashed) else None


def _live(connection: sqlite3.Connection, hashed: str, session_id: str | None, now: float | None):
    row = connection.execute(
        "SELECT user_id, role, kiosk_id, expires_at FROM sessions"
        " WHERE id_hash = ? AND revoked = 0",
        (hashed,),
    ).fetchone()
    now = time.time() if now is None else now
    if row is None or row[3] <= now:
        return None
    return Session(session_id, row[0], row[1], row[2], row[3], hashed)


def list_sessions(connection: sqlite3.Connection) -> list[SessionRow]:
    create_schema(connection)
    rows = connection.execute(f"SELECT {ROW_COLUMNS} FROM sessions ORDER BY created_at").fetchall()
    return [_row(r) for r in rows]


def as_reference(id_or_ref: str) -> str | None:
    """The text as a hash prefix `sessions list` could have shown, else None."""
    ref = id_or_ref.lower()
    if not 8 <= len(ref) <= 64 or ref.strip("0123456789abcdef"):
        return None
    return ref


def revoke_session_row(connection: sqlite3.Connection, id_or_ref: str) -> SessionRow | None:
    """Revoke by full session id, or by the reference `sessions list` shows when it matches
    exactly one session not revoked yet; the row revoked (as it was listed), else None."""
    create_schema(connection)
    found = connection.execute(
        f"SELECT {ROW_COLUMNS} FROM sessions WHERE id_hash = ? AND revoked = 0", (id_hash(id_or_ref),)
    ).fetchall()
    ref = as_reference(id_or_ref)
    if not found and ref is not None:
        found = connection.execute(
            f"SELECT {ROW_COLUMNS} FROM sessions WHERE id_hash LIKE ? AND revoked = 0", (ref + "%",)
        ).fetchall()
    if len(found) != 1:
        return None
    connection.execute("UPDATE sessions SET revoked = 1 WHERE id_hash = ?", (found[0][0],))
    return _row(found[0])


def revoke_session(connection: sqlite3.Connection, id_or_ref: str) -> int:
    """Revoke by full session id, or by the reference `sessions list` shows; the count."""
    return 0 if revoke_session_row(connection, id_or_ref) is None else 1


@implementer(ISessionStore, ISessionAdmin)
class SQLiteSessionStore:
    def __init__(self, database):
        self._db = database
        database.add_schema(create_schema)

    def lookup(self, session_id):
        return self._db.run(lookup_session, session_id)

    def lookup_hash(self, hashed):
        return self._db.run(lookup_session_hash, hashed)

    def create(self, user_id, role, kiosk_id=None, ttl=86400.0):
        return self._db.run(create_session, user_id, role, kiosk_id, ttl)

    def revoke(self, id_or_ref):
        return self._db.run(revoke_session, id_or_ref)

    def revoke_row(self, id_or_ref):
        return self._db.run(revoke_session_row, id_or_ref)

    def list(self):
        return self._db.run(list_sessions)

    def ping(self):
        return self._db.run(lambda connection: connection.execute("SELECT 1").fetchone())
