"""WAMP at the frame level: `websockets` clients on /wamp that send and read raw WAMP arrays
(JSON or MessagePack), for tests/test_wamp_raw.py and tests/test_wamp_limits.py.

A module that uses `connect` or `join` imports `close_raw_clients` too (an autouse fixture:
raw clients do not answer the router's GOODBYE at shutdown, so they are closed first)."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed

from conftest import aio

HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE, ERROR = 1, 2, 3, 4, 5, 6, 8
PUBLISH, SUBSCRIBE, SUBSCRIBED, UNSUBSCRIBE, EVENT, CALL, RESULT, YIELD = 16, 32, 33, 34, 36, 48, 50, 70
ROLES = {"subscriber": {}, "publisher": {}, "caller": {}}


opened: list = []  # this test's raw clients, closed before its server stops


@pytest.fixture(autouse=True)
def close_raw_clients(start_server):
    """Raw clients do not answer the router's GOODBYE at shutdown: close them first."""
    yield
    while opened:
        pytest_twisted.blockon(opened.pop().close())


async def connect(server, subprotocol="wamp.2.json"):
    client = await server.connect("/wamp", subprotocols=[subprotocol])
    opened.append(client)
    return client


async def join(server, role="admin", subprotocol="wamp.2.json", roles=None):
    """A raw client past HELLO (announcing `roles`), CHALLENGE, AUTHENTICATE and WELCOME;
    (client, WELCOME)."""
    client = await connect(server, subprotocol)
    sid = await server.session(role=role)
    await client.send([HELLO, "eform", {"roles": roles or ROLES, "authmethods": ["ticket"]}])
    assert await client.recv() == [CHALLENGE, "ticket", {}]
    await client.send([AUTHENTICATE, sid, {}])
    welcome = await client.recv()
    assert welcome[0] == WELCOME, welcome
    return client, welcome


async def _next_or_close(client):
    try:
        return "message", json.loads(await asyncio.wait_for(client.connection.recv(), 5.0))
    except ConnectionClosed:
        received = client.connection.protocol.close_rcvd
        return "closed", (received.code, received.reason) if received else (1006, "")


def next_or_close(client):
    """("message", the next message) or ("closed", (code, reason))."""
    return aio(_next_or_close(client))


async def assert_aborted(client, reason: str, code: int = 1002) -> dict:
    """The next message is ABORT `reason`, then the server closes with `code`; the ABORT's
    details are returned."""
    kind, message = await next_or_close(client)
    assert kind == "message" and message[0] == ABORT and message[2] == reason, message
    assert (await client.closed())[0] == code
    return message[1]
