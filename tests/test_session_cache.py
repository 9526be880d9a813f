"""Session lookups remembered for a few seconds (eformws/sessions/cache.py; docs/operations.md,
`sessions.lookup_cache`): a handshake of a session looked up a moment ago asks the store
nothing; a revoke through the process forgets at once; the recheck asks the store itself."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import succeed

from eformws.sessions import Session
from eformws.sessions.cache import CachedSessions

LIVE = Session("sid-1", "alice", "staff", None, expires_at=2_000_000_000.0)


class CountingStore:
    """A store that knows `sessions` and counts what it is asked."""

    def __init__(self, *sessions):
        self.sessions = {s.id: s for s in sessions}
        self.lookups = 0

    def lookup(self, session_id):
        self.lookups += 1
        return succeed(self.sessions.get(session_id))

    def revoke(self, id_or_ref):
        return succeed(int(self.sessions.pop(id_or_ref, None) is not None))

    revoke_row = revoke


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest_twisted.ensureDeferred
async def test_a_session_looked_up_a_moment_ago_is_answered_without_asking_the_store():
    store, clock = CountingStore(LIVE), Clock()
    cached = CachedSessions(store, 5.0, clock=clock)
    assert await cached.lookup("sid-1") == LIVE
    clock.now = 4.9
    assert await cached.lookup("sid-1") == LIVE
    assert store.lookups == 1


@pytest_twisted.ensureDeferred
async def test_past_the_cache_time_the_store_is_asked_again_and_a_revoke_elsewhere_is_seen():
    store, clock = CountingStore(LIVE), Clock()
    cached = CachedSessions(store, 5.0, clock=clock)
    await cached.lookup("sid-1")
    del store.sessions["sid-1"]  # revoked by another process or the CLI
    clock.now = 5.0
    assert await cached.lookup("sid-1") is None
    assert store.lookups == 2


@pytest_twisted.ensureDeferred
async def test_a_revoke_through_the_cache_forgets_at_once():
    store = CountingStore(LIVE)
    cached = CachedSessions(store, 5.0, clock=Clock())
    await cached.lookup("sid-1")
    assert await cached.revoke("sid-1") == 1
    assert await cached.lookup("sid-1") is None


@pytest_twisted.ensureDeferred
async def test_an_unknown_id_is_not_remembered_and_an_expired_session_is_not_given():
    store, clock = CountingStore(), Clock()
    cached = CachedSessions(store, 5.0, clock=clock, wall=lambda: 3_000_000_000.0)
    assert await cached.lookup("later") is None
    store.sessions["later"] = Session("later", "bob", "staff", None, expires_at=3_000_000_001.0)
    assert (await cached.lookup("later")).user_id == "bob"  # created since: found
    assert await cached.lookup("later") is not None and store.lookups == 2
    cached._wall = lambda: 3_000_000_002.0  # past its expiry: asked again, and the store says no more
    del store.sessions["later"]
    assert await cached.lookup("later") is None


@pytest_twisted.ensureDeferred
async def test_past_max_entries_the_least_recently_used_are_forgotten():
    sessions = [Session(f"sid-{n}", "u", "staff", None, expires_at=2_000_000_000.0) for n in range(3)]
    store = CountingStore(*sessions)
    cached = CachedSessions(store, 5.0, clock=Clock(), max_entries=2)
    for n in range(3):
        await cached.lookup(f"sid-{n}")
    await cached.lookup("sid-0")
    assert store.lookups == 4  # sid-0 had been forgotten
    await cached.lookup("sid-2")
    assert store.lookups == 4


@pytest_twisted.ensureDeferred
async def test_a_revoke_made_elsewhere_closes_an_open_connection_at_the_recheck_even_when_cached(start_server):
    server = await start_server({"sessions.recheck_interval": 0.2, "sessions.lookup_cache": 60})
    session_id = await server.session()
    client = await server.join("/ws/lockers", session_id)
    again = await server.join("/ws/lockers", session_id)  # let in from memory
    await server.service.sessions.revoke(session_id)  # the store itself: as the CLI would
    assert await client.closed() == (1008, "Session revoked")
    assert await again.closed() == (1008, "Session revoked")
