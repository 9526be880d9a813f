"""Every byte the server writes to a client counts against `websocket.max_unsent_bytes`
(replies, pongs, errors, WAMP results, not only broadcasts), every frame a client sends
against the inbound rate limit (control pings too), and a client that sends but never
reads is closed by the ping timeout."""

from __future__ import annotations

import asyncio
import json

import pytest_twisted
from conftest import aio
from twisted.internet import reactor

from bench.rawclient import StalledClient, client_frame

LOCKERS = "/ws/lockers"
LIMIT = 128 * 1024
GENEROUS = {"websocket.rate_limit": 100000.0, "websocket.rate_burst": 100000, "websocket.close_handshake_timeout": 60.0}


def newest(server, path=LOCKERS):
    return list(server.hub.namespaces[path].connections.values())[-1]


async def texts_then_close(client: StalledClient) -> tuple[int, int]:
    """Read everything up to the server's close frame: (text frames, close code)."""
    counts, code, _ = await client.until_close()
    return counts[0x1], code


@pytest_twisted.ensureDeferred
async def test_pongs_a_client_never_reads_close_it_1013_before_all_are_written(start_server):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, **GENEROUS})
    session_id = await server.session(role="staff")
    client = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    echo = "x" * 30000  # each pong echoes it: 40 of them are 1.2 MB, far over the bound
    for _ in range(40):
        await aio(client.send_text(json.dumps({"type": "ping", "data": {"timestamp": echo}})))
    texts, code = await aio(asyncio.wait_for(texts_then_close(client), 10))
    assert code == 1013
    assert texts < 2 + 40  # connection and room_joined, then fewer pongs than pings


@pytest_twisted.ensureDeferred
async def test_error_replies_a_client_never_reads_close_it_1013(start_server):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, **GENEROUS})
    session_id = await server.session(role="staff")
    client = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    unknown = json.dumps({"type": "x" * 20000})  # quoted back in `Unknown message type: ...`
    for _ in range(40):
        await aio(client.send_text(unknown))
    texts, code = await aio(asyncio.wait_for(texts_then_close(client), 10))
    assert code == 1013
    assert texts < 2 + 40


@pytest_twisted.ensureDeferred
async def test_wamp_results_a_session_never_reads_close_it_1013(start_server):
    # A WAMP session's bound is the larger of this and twice wamp.max_message_bytes (docs/wamp.md).
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, "wamp.max_message_bytes": LIMIT // 2, **GENEROUS})
    session_id = await server.session(role="staff")

    async def establish(client):
        await client.send_text(json.dumps([1, "eform", {"roles": {"caller": {}}, "authmethods": ["ticket"]}]))
        assert json.loads(await client.read_text())[0] == 4  # CHALLENGE
        await client.send_text(json.dumps([5, session_id, {}]))
        assert json.loads(await client.read_text())[0] == 2  # WELCOME

    client = await aio(StalledClient.connect(server.port, "/wamp", "wamp.2.json", before_stalling=establish))
    for request in range(1, 2001):  # each RESULT is a status object: far more than 128 KiB in all
        await aio(client.send_text(json.dumps([48, request, {}, "eform.status"])))
    texts, code = await aio(asyncio.wait_for(texts_then_close(client), 20))
    assert code == 1013
    assert texts < 2000


@pytest_twisted.ensureDeferred
async def test_control_pings_over_the_rate_limit_get_no_pong_and_close_the_connection_1008(start_server):
    server = await start_server({"websocket.rate_limit": 0.1, "websocket.rate_burst": 5,
                                 "websocket.rate_limit_close_after": 10})
    session_id = await server.session(role="staff")
    client = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    for n in range(30):
        await aio(client.send_ping(b"%d" % n))

    counts, code, reason = await aio(asyncio.wait_for(client.until_close(), 10))
    assert (counts[0xA], code, reason) == (5, 1008, "Rate limit exceeded")


@pytest_twisted.ensureDeferred
async def test_a_client_that_keeps_sending_but_never_reads_is_closed_by_the_ping_timeout(start_server):
    server = await start_server({"websocket.ping_interval": 0.3, "websocket.ping_timeout": 0.5, **GENEROUS})
    session_id = await server.session(role="staff")
    client = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    connection = newest(server)
    closed = connection.closed
    closed.addTimeout(10, reactor)

    async def keep_sending():
        while True:  # a data frame every 50 ms: before, each one put the ping timeout off
            await client.send_text(json.dumps({"type": "ping"}))
            await asyncio.sleep(0.05)

    sender = asyncio.ensure_future(keep_sending())
    try:
        await closed
    finally:
        sender.cancel()
    assert connection.id not in server.hub.namespaces[LOCKERS].connections


async def close_code_after(start_server, frames: bytes) -> int:
    """The close code a client gets that sends `frames` at once (a rate limit of a token
    every 10 s, a burst of 5, closed after 10 refusals in a row), reading what comes."""
    server = await start_server({"websocket.rate_limit": 0.1, "websocket.rate_burst": 5,
                                 "websocket.rate_limit_close_after": 10})
    session_id = await server.session(role="staff")
    client = await aio(StalledClient.connect(server.port, f"{LOCKERS}?sessionId={session_id}"))
    client.writer.write(frames)
    return await aio(asyncio.wait_for(client.close_code(), 10))


@pytest_twisted.ensureDeferred
async def test_a_flood_of_unsolicited_pongs_is_closed_1008(start_server):
    assert await close_code_after(start_server, client_frame(0xA, b"") * 100) == 1008


@pytest_twisted.ensureDeferred
async def test_a_flood_of_empty_continuation_frames_is_closed_1008(start_server):
    first = bytearray(client_frame(0x1, b"{"))
    first[0] &= 0x7F  # not final: a message that goes on in continuation frames
    continuation = bytes([0x00, 0x80]) + b"\0\0\0\0"  # opcode 0, not final, masked, empty
    assert await close_code_after(start_server, bytes(first) + continuation * 100) == 1008
