"""Slow consumers: a client that stops reading while broadcasts go on is closed with 1013
once what waits for it passes `websocket.max_unsent_bytes`; nobody else notices."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_twisted
from conftest import aio
from twisted.internet import reactor
from twisted.internet.task import deferLater

from bench.rawclient import StalledClient
from eformws.core import metrics
from eformws.core.slow_consumer import unsent_bytes

LOCKERS = "/ws/lockers"
LIMIT = 128 * 1024
HEALTHY = 200
BROADCASTS = 2000
SLOW_CLOSES = metrics.slow_consumer_closes.labels(metrics.WEBSOCKET)._value
PAYLOAD = "x" * 400  # each broadcast is about 500 bytes on the wire: 1 MB for the stalled client


async def drain(client, count: int) -> int:
    """Read `count` broadcasts (after the connection's own messages); how many came."""
    got = 0
    async for raw in client.connection:
        if json.loads(raw).get("type") == "tick":
            got += 1
            if got == count:
                return got
    return got


@pytest.mark.slow  # ~6 s: 2,000 broadcasts to 200 clients
@pytest_twisted.ensureDeferred
async def test_stalled_client_is_closed_1013_while_200_healthy_clients_get_every_broadcast(start_server):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, "websocket.close_handshake_timeout": 60.0})
    closes_before = SLOW_CLOSES.get()
    session_id = await server.session(role="staff")
    healthy = [await server.join(LOCKERS, session_id) for _ in range(HEALTHY)]
    stalled = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    readers = [aio(drain(client, BROADCASTS)) for client in healthy]
    stalled_connection = list(server.hub.namespaces[LOCKERS].connections.values())[-1]  # the newest
    most_unsent = 0
    for n in range(BROADCASTS):
        server.service.events.broadcast(LOCKERS, "tick", {"n": n, "pad": PAYLOAD})
        if stalled_connection.transport is not None:
            most_unsent = max(most_unsent, unsent_bytes(stalled_connection.transport))
        if n % 20 == 0:
            await deferLater(reactor, 0, lambda: None)  # let the healthy clients read
    counts = [await d for d in readers]
    assert counts == [BROADCASTS] * HEALTHY
    assert await aio(asyncio.wait_for(stalled.close_code(), 10)) == 1013
    assert SLOW_CLOSES.get() - closes_before == 1  # the eformws_slow_consumer_closes_total counter
    # measured after each quarter of the limit written: at most 1.25 x the limit and a message
    assert LIMIT < most_unsent <= LIMIT + LIMIT // 4 + 1024


@pytest.mark.slow  # ~5 s: fills a stalled subscriber's buffer
@pytest_twisted.ensureDeferred
async def test_stalled_wamp_subscriber_is_closed_1013_and_others_keep_getting_events(start_server):
    # A WAMP session's bound is the larger of this and twice wamp.max_message_bytes (docs/wamp.md).
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, "wamp.max_message_bytes": LIMIT // 2,
                                 "websocket.close_handshake_timeout": 60.0})
    session_id = await server.session(role="staff")
    healthy = await server.join(LOCKERS, session_id)

    async def subscribe(client):
        await client.send_text(json.dumps([1, "eform", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}]))
        assert json.loads(await client.read_text())[0] == 4  # CHALLENGE
        await client.send_text(json.dumps([5, session_id, {}]))
        assert json.loads(await client.read_text())[0] == 2  # WELCOME
        await client.send_text(json.dumps([32, 1, {}, "eform.lockers"]))
        assert json.loads(await client.read_text())[0] == 33  # SUBSCRIBED

    stalled = await aio(StalledClient.connect(server.port, "/wamp", "wamp.2.json", subscribe))
    reader = aio(drain(healthy, 500))
    for n in range(500):
        server.service.events.broadcast(LOCKERS, "tick", {"n": n, "pad": PAYLOAD * 4})
        if n % 20 == 0:
            await deferLater(reactor, 0, lambda: None)
    assert await reader == 500
    assert await aio(asyncio.wait_for(stalled.close_code(), 10)) == 1013
