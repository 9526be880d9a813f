"""permessage-deflate (`websocket.compression`, RFC 7692) as clients see it: declined when
off; when on, what is negotiated, frames any client of that window size inflates (each
message deflated on its own), small messages left plain, /wamp never compressed, a
compressed message inflating past the limit closed 1009, and no inflater kept between a
client's messages. A raw socket reads the frames as they are on the wire; `websockets`
(its own permessage-deflate) reads the messages."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib

import pytest_twisted
from conftest import aio, until_pong

from eformws.transports.deflate import MIN_DEFLATE_BYTES, DeflateFraming

LOCKERS = "/ws/lockers"
ON = {"websocket.compression": True}


class RawClient:
    """A WebSocket client on a bare socket: the handshake with the extension offer given,
    then whole frames as they came (RSV1 bit, opcode, payload)."""

    def __init__(self, reader, writer, response_headers: dict):
        self.reader, self.writer, self.headers = reader, writer, response_headers

    @classmethod
    async def open(cls, port: int, path: str, offer: str | None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        extension = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        assert head[0].startswith("HTTP/1.1 101"), head
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        return cls(reader, writer, headers)

    async def frame(self) -> tuple[bool, int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return bool(first & 0x40), first & 0x0F, await self.reader.readexactly(size)

    async def message(self, window_bits: int = 15) -> tuple[bool, dict]:
        """(whether it came deflated, the JSON message), inflated with a fresh inflater:
        what a client that keeps no context between messages can do."""
        rsv1, opcode, payload = await self.frame()
        assert opcode == 1, opcode
        if rsv1:
            payload = zlib.decompressobj(-window_bits).decompress(payload + b"\x00\x00\xff\xff")
        return rsv1, json.loads(payload)

    def close(self) -> None:
        self.writer.close()


def raw(server, path: str, offer: str | None = "permessage-deflate"):
    return aio(RawClient.open(server.port, path, offer))


def big_broadcast(server, n: int = 0):
    """A broadcast well past MIN_DEFLATE_BYTES that deflates well."""
    return server.service.events.broadcast(LOCKERS, "maintenance", {"note": "locker maintenance " * 40, "n": n})


async def greeted(client: RawClient) -> None:
    """Read `connection` (deflated or not, by its size) and `room_joined` (small: plain)."""
    _, connection = await aio(client.message())
    assert connection["type"] == "connection"
    rsv1, joined = await aio(client.message())
    assert (rsv1, joined["type"]) == (False, "room_joined")


@pytest_twisted.ensureDeferred
async def test_an_offer_is_declined_when_compression_is_off(start_server):
    server = await start_server()
    session_id = await server.session()
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}")
    assert "sec-websocket-extensions" not in client.headers
    await greeted(client)
    await big_broadcast(server)
    rsv1, message = await aio(client.message())
    assert rsv1 is False and message["type"] == "maintenance"
    client.close()


@pytest_twisted.ensureDeferred
async def test_with_compression_on_an_offer_is_accepted_asking_the_client_for_no_context_takeover(start_server):
    server = await start_server(ON)
    session_id = await server.session()
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}")
    assert client.headers["sec-websocket-extensions"] == "permessage-deflate; client_no_context_takeover"
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_every_client_deflated_in_the_same_bytes_each_inflatable_alone(start_server):
    server = await start_server(ON)
    session_id = await server.session()
    clients = [await raw(server, f"{LOCKERS}?sessionId={session_id}") for _ in range(3)]
    for client in clients:
        await greeted(client)
    for n in range(3):
        await big_broadcast(server, n)
    frames = [[await aio(client.frame()) for _ in range(3)] for client in clients]
    assert frames[0] == frames[1] == frames[2]  # deflated once, the same bytes to each
    for n, (rsv1, opcode, payload) in enumerate(frames[0]):
        assert rsv1 and opcode == 1
        inflated = json.loads(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"))
        assert (inflated["type"], inflated["data"]["n"]) == ("maintenance", n)
        assert len(payload) < len(json.dumps(inflated)) / 4
    for client in clients:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_asking_a_smaller_server_window_gets_frames_deflated_within_it(start_server):
    server = await start_server(ON)
    session_id = await server.session()
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}", "permessage-deflate; server_max_window_bits=9")
    assert "server_max_window_bits=9" in client.headers["sec-websocket-extensions"]
    await greeted(client)
    await big_broadcast(server)
    rsv1, message = await aio(client.message(window_bits=9))
    assert rsv1 and message["data"]["n"] == 0
    client.close()


@pytest_twisted.ensureDeferred
async def test_replies_and_replayed_events_are_deflated_too_and_small_ones_left_plain(start_server):
    server = await start_server({**ON, "events.replay_limit": 5})
    events = [await server.service.events.emit_locker_state_changed(f"kiosk-1:{n}", "closed", "open", "kiosk-1",
                                                                     metadata={"note": "x" * 200})
              for n in range(2)]
    session_id = await server.session()
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}")
    await greeted(client)
    replayed = [await aio(client.message()) for _ in range(2)]
    assert replayed == [(True, event) for event in events]
    client.writer.write(masked(json.dumps({"type": "join_room", "room": "r" * 100}).encode()))
    rsv1, reply = await aio(client.message())
    assert (rsv1, reply["type"]) == (len(json.dumps(reply)) >= MIN_DEFLATE_BYTES, "room_joined")
    client.close()


def masked(payload: bytes) -> bytes:
    """One masked text frame from a client (uncompressed)."""
    mask = os.urandom(4)
    head = bytes((0x81, 0x80 | len(payload))) if len(payload) < 126 else struct.pack("!BBH", 0x81, 0xFE, len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest_twisted.ensureDeferred
async def test_websockets_with_its_own_deflate_gets_every_message_right(start_server):
    server = await start_server({**ON, "events.replay_limit": 0})  # no catch-up holding broadcasts behind the pong
    client = await server.join(LOCKERS, await server.session())
    assert "permessage-deflate" in client.connection.response.headers["Sec-WebSocket-Extensions"]
    for n in range(5):
        await big_broadcast(server, n)
    got = await until_pong(client)
    assert [(m["type"], m["data"]["n"]) for m in got] == [("maintenance", n) for n in range(5)]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_wamp_declines_compression_even_when_it_is_on(start_server):
    server = await start_server(ON)
    reader, writer = await aio(asyncio.open_connection("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /wamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n"
                  f"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n").encode())
    head = (await aio(reader.readuntil(b"\r\n\r\n"))).decode("latin-1")
    assert head.startswith("HTTP/1.1 101") and "sec-websocket-extensions" not in head.lower()
    writer.close()


@pytest_twisted.ensureDeferred
async def test_a_deflated_message_inflating_past_the_limit_is_closed_1009(start_server):
    server = await start_server({**ON, "websocket.max_message_bytes": 65536})
    client = await server.join(LOCKERS, await server.session())
    bomb = json.dumps({"type": "ping", "data": {"timestamp": "0" * 10_000_000}})  # ~10 KB deflated
    replies, (code, _) = await client.flood([bomb])
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_no_inflater_is_kept_between_a_clients_messages(start_server):
    server = await start_server(ON)
    client = await server.join(LOCKERS, await server.session())
    await until_pong(client)  # a ping (deflated by websockets) and its pong
    (connection,) = server.hub.namespaces[LOCKERS].connections.values()
    assert connection._perMessageCompress.client_no_context_takeover is True
    assert connection._perMessageCompress._decompressor is None
    await client.close()


def test_a_message_deflates_to_the_same_bytes_whatever_was_deflated_before():
    framing = DeflateFraming(15)
    alone = DeflateFraming(15).frame(b'{"a":"' + b"z" * 500 + b'"}')
    framing.frame(b'{"b":"' + b"z" * 700 + b'"}')
    assert framing.frame(b'{"a":"' + b"z" * 500 + b'"}').payloadHybi == alone.payloadHybi


def test_a_message_that_would_not_shrink_goes_plain():
    payload = os.urandom(4000)
    frame = DeflateFraming(15).frame(payload, True)
    assert frame.payloadHybi[0] == 0x82 and frame.payloadHybi.endswith(payload)


@pytest_twisted.ensureDeferred
async def test_an_offer_autobahn_cannot_parse_is_declined_and_the_next_offer_taken(start_server):
    server = await start_server(ON)
    session_id = await server.session()
    offers = "permessage-deflate; server_max_window_bits=8, permessage-deflate; foo=1, permessage-deflate"
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}", offers)
    assert client.headers["sec-websocket-extensions"] == "permessage-deflate; client_no_context_takeover"
    client.close()


@pytest_twisted.ensureDeferred
async def test_an_unparsable_offer_with_compression_off_is_declined_not_refused(start_server):
    server = await start_server()
    session_id = await server.session()
    client = await raw(server, f"{LOCKERS}?sessionId={session_id}", "permessage-deflate; client_no_context_takeover; "
                                                                     "client_no_context_takeover")
    assert "sec-websocket-extensions" not in client.headers
    await greeted(client)
    client.close()
