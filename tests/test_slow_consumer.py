"""Slow consumers: a client that stops reading while broadcasts go on is closed with 1013
once what waits for it passes `websocket.max_unsent_bytes`; nobody else notices."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest_twisted
from conftest import aio
from twisted.internet import reactor
from twisted.internet.task import deferLater

from eformws import metrics
from eformws.flow import unsent_bytes

LOCKERS = "/ws/lockers"
LIMIT = 128 * 1024
HEALTHY = 200
BROADCASTS = 2000
SLOW_CLOSES = metrics.slow_consumer_closes.labels(metrics.WEBSOCKET)._value
PAYLOAD = "x" * 400  # each broadcast is about 500 bytes on the wire: 1 MB for the stalled client


class StalledClient:
    """A raw WebSocket client that completes the handshake and then never reads again,
    with a small receive buffer so the server's own buffer is what fills up."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str, protocol: str | None = None, before_stalling=None) -> "StalledClient":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "") + "\r\n"
        ).encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        if before_stalling is not None:
            await before_stalling(client)
        reader._transport.pause_reading()  # from here on nothing is read
        return client

    async def send_text(self, text: str) -> None:
        """One masked text frame, as a client sends it."""
        payload = text.encode()
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big"))
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await self.writer.drain()

    async def _frame(self) -> tuple[int, bytes]:
        """The next frame the server sent (unmasked, unfragmented): (opcode, payload)."""
        first = await self.reader.readexactly(2)
        length = first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first[0] & 0x0F, await self.reader.readexactly(length)

    async def read_text(self) -> str:
        """The next text frame's payload."""
        while True:
            opcode, payload = await self._frame()
            if opcode == 0x1:
                return payload.decode()

    async def close_code(self) -> int:
        """Read what the server sent, up to its close frame: the close code."""
        self.reader._transport.resume_reading()
        while True:
            opcode, payload = await self._frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")


async def drain(client, count: int) -> int:
    """Read `count` broadcasts (after the connection's own messages); how many came."""
    got = 0
    async for raw in client.connection:
        if json.loads(raw).get("type") == "tick":
            got += 1
            if got == count:
                return got
    return got


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
        server.hub.broadcast(LOCKERS, "tick", {"n": n, "pad": PAYLOAD})
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


@pytest_twisted.ensureDeferred
async def test_stalled_wamp_subscriber_is_closed_1013_and_others_keep_getting_events(start_server):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, "websocket.close_handshake_timeout": 60.0})
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
        server.hub.broadcast(LOCKERS, "tick", {"n": n, "pad": PAYLOAD * 4})
        if n % 20 == 0:
            await deferLater(reactor, 0, lambda: None)
    assert await reader == 500
    assert await aio(asyncio.wait_for(stalled.close_code(), 10)) == 1013
