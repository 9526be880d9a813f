"""Session lookups remembered for a few seconds: a handshake of a session looked up a moment
ago (a kiosk reconnecting, a fleet behind one session) asks the store nothing."""

from __future__ import annotations

import time
from collections import OrderedDict

from twisted.internet.defer import succeed
from zope.interface import implementer

from eformws.sessions import ISessionAdmin, ISessionStore

MAX_ENTRIES = 10_000  # sessions remembered; past it the least recently used go


@implementer(ISessionStore, ISessionAdmin)
class CachedSessions:
    """`store` with its positive `lookup` answers kept for `ttl` seconds (never past a
    session's expiry). A revoke through this object forgets them all at once; one made
    elsewhere (another process, the CLI) is seen within `ttl` by new handshakes, and open
    connections are closed by the session recheck, which asks `store` itself. Unknown ids
    are not remembered (a session may be created a moment later)."""

    def __init__(self, store, ttl: float, clock=time.monotonic, wall=time.time, max_entries: int = MAX_ENTRIES):
        self.store = store
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        self._max_entries = max_entries
        self._known: OrderedDict[str, tuple[object, float]] = OrderedDict()  # session id -> (session, until)

    def lookup(self, session_id):
        known = self._known.get(session_id)
        if known is not None:
            session, until = known
            if self._clock() < until and self._wall() < session.expires_at:
                self._known.move_to_end(session_id)
                return succeed(session)
            del self._known[session_id]
        d = self.store.lookup(session_id)
        d.addCallback(self._remember, session_id)
        return d

    def _remember(self, session, session_id):
        if session is not None and self.ttl > 0:
            self._known[session_id] = (session, self._clock() + self.ttl)
            while len(self._known) > self._max_entries:
                self._known.popitem(last=False)
        return session

    def forget(self) -> None:
        self._known.clear()

    def revoke(self, id_or_ref):
        self.forget()
        return self.store.revoke(id_or_ref)

    def revoke_row(self, id_or_ref):
        self.forget()
        return self.store.revoke_row(id_or_ref)

    def lookup_hash(self, hashed):
        return self.store.lookup_hash(hashed)

    def ping(self):
        return self.store.ping()

    def create(self, user_id, role, kiosk_id=None, ttl=86400.0):
        return self.store.create(user_id, role, kiosk_id, ttl)

    def list(self):
        return self.store.list()
