"""Sessions over time: a session that expires or is revoked while connected ends its
connections (legacy and WAMP) with 1008 `Session expired` within `sessions.recheck_interval`."""

from __future__ import annotations

import pytest_twisted

from test_wamp import open_peer, within

LOCKERS = "/ws/lockers"
FAST = {"sessions.recheck_interval": 0.1}


@pytest_twisted.ensureDeferred
async def test_connection_whose_session_expires_is_closed_1008_session_expired(start_server):
    server = await start_server(FAST)
    client = await server.join(LOCKERS, await server.session(ttl=0.5))
    assert await client.closed(timeout=5) == (1008, "Session expired")


@pytest_twisted.ensureDeferred
async def test_connection_whose_session_is_revoked_is_closed_1008_session_expired(start_server):
    server = await start_server(FAST)
    session_id = await server.session()
    client = await server.join(LOCKERS, session_id)
    await server.service.sessions.revoke(session_id)
    assert await client.closed(timeout=5) == (1008, "Session expired")


@pytest_twisted.ensureDeferred
async def test_other_sessions_connections_stay_open_when_one_is_revoked(start_server):
    server = await start_server(FAST)
    revoked, kept = await server.session(), await server.session()
    gone = await server.join(LOCKERS, revoked)
    staying = await server.join(LOCKERS, kept)
    await server.service.sessions.revoke(revoked)
    assert await gone.closed(timeout=5) == (1008, "Session expired")
    server.hub.broadcast(LOCKERS, "still-here", {})
    assert (await staying.recv())["type"] == "still-here"


@pytest_twisted.ensureDeferred
async def test_anonymous_connections_are_not_closed_by_the_recheck(start_server):
    server = await start_server(FAST)
    server.hub.create_namespace("/ws/open", require_auth=False)
    anonymous = await server.join("/ws/open")
    expiring = await server.join(LOCKERS, await server.session(ttl=0.3))
    assert await expiring.closed(timeout=5) == (1008, "Session expired")
    server.hub.broadcast("/ws/open", "still-here", {})
    assert (await anonymous.recv())["type"] == "still-here"


@pytest_twisted.ensureDeferred
async def test_wamp_session_whose_session_is_revoked_gets_goodbye_then_1008(start_server):
    server = await start_server(FAST)
    session_id = await server.session()
    peer = open_peer(server, "json", ticket=session_id)
    await within(peer.joined)
    await server.service.sessions.revoke(session_id)
    details = await within(peer.left)
    assert details.message == "Session expired"
    await within(peer.gone)
