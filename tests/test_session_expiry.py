"""Sessions over time: a session that expires while connected ends its connections (legacy
and WAMP) with 1008 `Session expired`, one that is revoked (gone from the store before its
expiry) with 1008 `Session revoked`, within `sessions.recheck_interval`; a check asked for
during a round gets a round of its own after it."""

from __future__ import annotations

import pytest_twisted
from conftest import within
from twisted.internet.defer import Deferred, fail, succeed
from wamp_peer import open_peer

from eformws.sessions import Session
from eformws.sessions.watch import SessionWatch

LOCKERS = "/ws/lockers"
FAST = {"sessions.recheck_interval": 0.1}


@pytest_twisted.ensureDeferred
async def test_connection_whose_session_expires_is_closed_1008_session_expired(start_server):
    server = await start_server(FAST)
    client = await server.join(LOCKERS, await server.session(ttl=0.5))
    assert await client.closed(timeout=5) == (1008, "Session expired")


@pytest_twisted.ensureDeferred
async def test_connection_whose_session_is_revoked_is_closed_1008_session_revoked(start_server):
    server = await start_server(FAST)
    session_id = await server.session()
    client = await server.join(LOCKERS, session_id)
    await server.service.sessions.revoke(session_id)
    assert await client.closed(timeout=5) == (1008, "Session revoked")


@pytest_twisted.ensureDeferred
async def test_other_sessions_connections_stay_open_when_one_is_revoked(start_server):
    server = await start_server(FAST)
    revoked, kept = await server.session(), await server.session()
    gone = await server.join(LOCKERS, revoked)
    staying = await server.join(LOCKERS, kept)
    await server.service.sessions.revoke(revoked)
    assert await gone.closed(timeout=5) == (1008, "Session revoked")
    server.service.events.broadcast(LOCKERS, "still-here", {})
    assert (await staying.recv())["type"] == "still-here"


@pytest_twisted.ensureDeferred
async def test_anonymous_connections_are_not_closed_by_the_recheck(start_server):
    server = await start_server(FAST)
    server.hub.create_namespace("/ws/open", require_auth=False)
    anonymous = await server.join("/ws/open")
    expiring = await server.join(LOCKERS, await server.session(ttl=0.3))
    assert await expiring.closed(timeout=5) == (1008, "Session expired")
    server.service.events.broadcast("/ws/open", "still-here", {})
    assert (await anonymous.recv())["type"] == "still-here"


@pytest_twisted.ensureDeferred
async def test_wamp_session_whose_session_is_revoked_gets_goodbye_session_revoked_then_1008(start_server):
    server = await start_server(FAST)
    session_id = await server.session()
    peer = open_peer(server, "json", ticket=session_id)
    await within(peer.joined)
    await server.service.sessions.revoke(session_id)
    details = await within(peer.left)
    assert details.message == "Session revoked"
    await within(peer.gone)


@pytest_twisted.ensureDeferred
async def test_wamp_session_whose_session_expires_gets_goodbye_session_expired_then_1008(start_server):
    server = await start_server(FAST)
    peer = open_peer(server, "json", ticket=await server.session(ttl=0.5))
    await within(peer.joined)
    details = await within(peer.left)
    assert details.message == "Session expired"
    await within(peer.gone)


class Connection:
    def __init__(self, session):
        self.session = session
        self.closed_with = None

    def close(self, code, reason):
        self.closed_with = (code, reason)


class Hub:
    def __init__(self, *connections):
        self._connections = connections

    def connections(self):
        return list(self._connections)


class HeldStore:
    """Lookups answer when the test says: `answer(found)` fires the oldest one waiting."""

    def __init__(self):
        self.waiting: list[Deferred] = []

    def lookup(self, session_id):
        d = Deferred()
        self.waiting.append(d)
        return d

    def answer(self, found):
        self.waiting.pop(0).callback(found)


def test_a_check_asked_for_during_a_round_runs_once_more_after_it_and_sees_a_revoke():
    session = Session("sid", "bob", "staff", None, expires_at=2000.0)
    connection = Connection(session)
    store = HeldStore()
    watch = SessionWatch(Hub(connection), store, 30.0, clock=lambda: 1000.0)
    first = watch.check()  # a round under way ...
    again = watch.check()  # ... when a revoke asks for one
    store.answer(session)  # the first round's lookup was answered before the revoke
    assert (first.result, connection.closed_with) == (0, None)
    assert not again.called and len(store.waiting) == 1  # a second round asks again
    store.answer(None)
    assert (again.result, connection.closed_with) == (1, (1008, "Session revoked"))


def test_a_connection_whose_store_cannot_answer_is_closed_only_for_its_known_expiry():
    live, over = Session("a", "u", "staff", None, 2000.0), Session("b", "u", "staff", None, 500.0)
    connections = Connection(live), Connection(over)

    class Down:
        def lookup(self, session_id):
            return fail(ConnectionError("down"))

    watch = SessionWatch(Hub(*connections), Down(), 30.0, clock=lambda: 1000.0)
    assert watch.check().result == 1
    assert [c.closed_with for c in connections] == [None, (1008, "Session expired")]


def test_a_session_gone_from_the_store_after_its_expiry_is_expired_not_revoked():
    connection = Connection(Session("sid", "bob", "staff", None, 900.0))

    class Empty:
        def lookup(self, session_id):
            return succeed(None)

    assert SessionWatch(Hub(connection), Empty(), 30.0, clock=lambda: 1000.0).check().result == 1
    assert connection.closed_with == (1008, "Session expired")
