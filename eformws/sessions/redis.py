"""Sessions in Redis, where the panel can write them: key `<prefix>session:<sha256 of the
id>` holding JSON {user_id, role, kiosk_id?, expires_at, revoked?}; see docs/operations.md."""

from __future__ import annotations

import json
import time

from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from zope.interface import implementer

from eformws.backends.redis import command_connection
from eformws.core.policy import ROLES
from eformws.sessions import ISessionAdmin, ISessionStore, Session, check_new_session, is_id_hash, new_session_id
from eformws.sessions.sqlite import (
    MAX_SESSION_ID_LENGTH,
    REF_LENGTH,
    SessionRow,
    as_reference,
    id_hash,
)

SCAN_COUNT = 500

# KEYS[1] := ARGV[2] (keeping its expiry) only if it still holds ARGV[1]: 1 if written, else 0.
REPLACE_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""


def session_record(user_id: str, role: str, kiosk_id: str | None, created_at: float, expires_at: float) -> str:
    record = {"user_id": user_id, "role": role, "created_at": created_at, "expires_at": expires_at}
    if kiosk_id is not None:
        record["kiosk_id"] = kiosk_id
    return json.dumps(record, separators=(",", ":"))


def _record(text) -> dict | None:
    """The stored JSON object when it has the required fields of the right types, else None."""
    if not text:
        return None
    try:
        record = json.loads(text)
        record["expires_at"] = float(record["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None
    kiosk_id = record.get("kiosk_id")
    if not isinstance(record.get("user_id"), str) or record.get("role") not in ROLES:
        return None
    if not (kiosk_id is None or isinstance(kiosk_id, str)):
        return None
    return record


def _row(hashed: str, record: dict) -> SessionRow:
    """What `sessions list` shows of a stored record (by the hash of its key); a record
    without a usable `created_at` (it is optional) counts as the oldest."""
    try:
        created_at = float(record.get("created_at", 0.0))
    except (ValueError, TypeError):
        created_at = 0.0
    return SessionRow(hashed[:REF_LENGTH], record["user_id"], record["role"], record.get("kiosk_id"),
                      created_at, record["expires_at"], bool(record.get("revoked")))


def parse_record(session_id: str | None, text, now: float, hashed: str = "") -> Session | None:
    """A live Session from a stored record; None for anything missing, malformed or over."""
    record = _record(text)
    if record is None or record.get("revoked") or record["expires_at"] <= now:
        return None
    return Session(session_id, record["user_id"], record["role"], record.get("kiosk_id"), record["expires_at"], hashed)


@implementer(ISessionStore, ISessionAdmin)
class RedisSessionStore(MultiService):
    def __init__(self, redis, prefix: str, initial_delay: float = 0.5, max_delay: float = 10.0, clock=time.time):
        super().__init__()
        self.prefix = prefix
        self._clock = clock
        self.connection = command_connection(self, redis, "session store", initial_delay, max_delay)

    def _key(self, hashed: str) -> str:
        return f"{self.prefix}session:{hashed}"

    @inlineCallbacks
    def lookup(self, session_id):
        if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
            return None
        text = yield self.connection.command("GET", self._key(id_hash(session_id)))
        return parse_record(session_id, text, self._clock())

    @inlineCallbacks
    def lookup_hash(self, hashed):
        if not is_id_hash(hashed):
            return None
        text = yield self.connection.command("GET", self._key(hashed))
        return parse_record(None, text, self._clock(), hashed)

    @inlineCallbacks
    def create(self, user_id, role, kiosk_id=None, ttl=86400.0):
        check_new_session(user_id, role, ttl, kiosk_id)
        session_id = new_session_id()
        now = self._clock()
        yield self.connection.command(
            "SET", self._key(id_hash(session_id)), session_record(user_id, role, kiosk_id, now, now + ttl),
            "PX", max(1, int(ttl * 1000)),
        )
        return Session(session_id, user_id, role, kiosk_id, now + ttl)

    @inlineCallbacks
    def _hashes(self, pattern: str) -> list[str]:
        """The hashes of every session key matching `pattern` (SCAN, never KEYS)."""
        found, cursor, head = set(), "0", len(self._key(""))
        while True:
            cursor, keys = yield self.connection.command("SCAN", cursor, "MATCH", self._key(pattern), "COUNT", SCAN_COUNT)
            found.update(key[head:] for key in keys)
            if str(cursor) == "0":
                return sorted(found)

    @inlineCallbacks
    def _records(self, pattern: str) -> list[tuple[str, dict]]:
        """(hash, record) of every well-formed session matching `pattern`."""
        hashes = yield self._hashes(pattern)
        found = []
        for start in range(0, len(hashes), SCAN_COUNT):
            chunk = hashes[start:start + SCAN_COUNT]
            texts = yield self.connection.command("MGET", *[self._key(h) for h in chunk])
            found.extend((hashed, record) for hashed, text in zip(chunk, texts) if (record := _record(text)) is not None)
        return found

    @inlineCallbacks
    def list(self) -> list[SessionRow]:
        """Every stored session by reference (hash prefix), oldest first."""
        rows = [_row(hashed, record) for hashed, record in (yield self._records("*"))]
        return sorted(rows, key=lambda row: row.created_at)

    @inlineCallbacks
    def revoke_row(self, id_or_ref):
        """Mark revoked by full id, or by a reference that matches exactly one session not
        revoked yet (as the SQLite store); the row revoked (as it was listed), else None.
        The write is a compare-and-set, so of concurrent revokes of one session exactly one
        gets the row. The key keeps its expiry, so the record goes when it would have."""
        candidates = [id_hash(id_or_ref)]
        ref = as_reference(id_or_ref)
        if ref is not None:
            unrevoked = [hashed for hashed, record in (yield self._records(ref + "*")) if not record.get("revoked")]
            candidates.append(unrevoked[0] if len(unrevoked) == 1 else None)
        for hashed in candidates:
            if hashed is None:
                continue
            key = self._key(hashed)
            text = yield self.connection.command("GET", key)
            record = _record(text)
            if record is None or record.get("revoked"):
                continue
            row = _row(hashed, record)
            record["revoked"] = True
            written = yield self.connection.command(
                "EVAL", REPLACE_IF_UNCHANGED, 1, key, text, json.dumps(record, separators=(",", ":"))
            )
            return row if written == 1 else None
        return None

    def revoke(self, id_or_ref):
        """Revoke as `revoke_row` does; the count."""
        return self.revoke_row(id_or_ref).addCallback(lambda row: 0 if row is None else 1)

    def ping(self):
        return self.connection.command("PING")
