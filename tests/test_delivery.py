"""Server -> client delivery (PROTOCOL.md section 5) through the hub's Python API
(broadcast, broadcast_to_room, send, stats, create_namespace), and liveness and
cleanup of connections (section 3): what a client observes, and what the hub keeps."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import uuid

import pytest
import pytest_twisted
from conftest import TS, aio, assert_got_nothing, within

DEFAULT_ROOMS = {"/ws/lockers": "locker_updates", "/ws/help": "help_requests", "/ws/events": "system_events"}


class Joined:
    """A `websockets` client and the id the server gave its connection."""

    def __init__(self, client, connection_id, path):
        self.client = client
        self.id = connection_id
        self.path = path

    def recv(self):
        return self.client.recv()

    def recv_raw(self):
        return self.client.recv_raw()

    def send(self, value):
        return self.client.send(value)

    def close(self):
        return self.client.close()


async def join(server, path="/ws/lockers", role="admin", kiosk=None, rooms=()):
    """Connect with a fresh session, read `connection` and `room_joined`, join `rooms`,
    and wait until the connection is live (past the replay on connect)."""
    session_id = None
    if server.hub.namespaces[path].require_auth:
        session_id = await server.session(f"user-{uuid.uuid4().hex[:8]}", role, kiosk)
    client = await server.join(path, session_id, rooms)
    connection_id = client.connection_id
    # Live frames are held back while the replay query runs; a direct message through the
    # hub comes after them, so once it arrives the connection is live and in order.
    await server.service.events.send(connection_id, "ready", {})
    ready = await client.recv()
    assert ready["type"] == "ready", ready
    return Joined(client, connection_id, path)


def server_side(server, joined):
    """The hub's connection object for a client."""
    return server.hub.namespaces[joined.path].connections[joined.id]


def rooms_holding(server, connection):
    return {
        (path, room)
        for path, ns in server.hub.namespaces.items()
        for room, members in ns.rooms.items()
        if connection in members
    }


# -- envelope B: broadcast --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_every_client_of_the_namespace_as_envelope_b(server):
    first = await join(server, "/ws/lockers")
    second = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    # Left its default room: a namespace broadcast still reaches it.
    await second.send({"type": "leave_room", "room": "locker_updates"})
    assert (await second.recv())["type"] == "room_left"
    data = {"lockerId": 7, "state": "open", "nested": {"list": [1, "two", None]}}
    await server.service.events.broadcast("/ws/lockers", "locker_opened", data)
    for joined in (first, second):
        got = await joined.recv()
        assert list(got) == ["type", "data", "timestamp", "namespace"], got
        assert got["type"] == "locker_opened"
        assert got["data"] == data
        assert TS.match(got["timestamp"])
        assert got["namespace"] == "/ws/lockers"
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_does_not_reach_other_namespaces(server):
    lockers = await join(server, "/ws/lockers")
    help_ = await join(server, "/ws/help")
    events = await join(server, "/ws/events")
    await server.service.events.broadcast("/ws/lockers", "locker_opened", {"lockerId": 7})
    assert (await lockers.recv())["type"] == "locker_opened"
    await assert_got_nothing(help_)
    await assert_got_nothing(events)
    for joined in (lockers, help_, events):
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_fires_with_the_local_recipient_count(server):
    assert await server.service.events.broadcast("/ws/lockers", "evt", {}) == 0
    clients = [await join(server, "/ws/lockers") for _ in range(3)]
    other = await join(server, "/ws/help")
    assert await server.service.events.broadcast("/ws/lockers", "evt", {}) == 3
    assert await server.service.events.broadcast("/ws/help", "evt", {}) == 1
    for joined in clients + [other]:
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_frame_is_compact_json_and_keeps_an_explicit_null(server):
    joined = await join(server, "/ws/lockers")
    await server.service.events.broadcast("/ws/lockers", "evt", {"a": None, "b": [1, 2], "text": "a b: c, d"})
    raw = await joined.client.recv_raw()
    assert isinstance(raw, str)  # a text frame
    parsed = json.loads(raw)
    assert parsed["data"] == {"a": None, "b": [1, 2], "text": "a b: c, d"}
    assert raw == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
    await joined.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_to_unknown_namespace_raises_unknown_namespace(server):
    from eformws.delivery.hub import UnknownNamespace

    with pytest.raises(UnknownNamespace):
        server.service.events.broadcast("/ws/nowhere", "evt", {})
    with pytest.raises(UnknownNamespace):
        server.service.events.broadcast_to_room("/ws/nowhere", "kiosk-1", "evt", {})


@pytest_twisted.ensureDeferred
async def test_broadcast_is_framed_once_whatever_the_number_of_recipients(server, monkeypatch):
    from eformws.transports.legacy import JsonFraming

    prepared = []
    original = JsonFraming.prepare

    def counting(self, message):
        prepared.append(message)
        return original(self, message)

    monkeypatch.setattr(JsonFraming, "prepare", counting)
    clients = [await join(server, "/ws/lockers") for _ in range(4)]
    prepared.clear()
    assert await server.service.events.broadcast("/ws/lockers", "evt", {"n": 1}) == 4
    assert len(prepared) == 1
    for joined in clients:
        assert (await joined.recv())["data"] == {"n": 1}
        await joined.close()


# -- envelope C: broadcast_to_room ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_to_room_reaches_only_members_as_envelope_c(server):
    member = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    outsider = await join(server, "/ws/lockers", rooms=("kiosk-2",))
    await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "door", {"open": True})
    got = await member.recv()
    assert list(got) == ["type", "data", "timestamp", "namespace", "room"], got
    assert got["type"] == "door"
    assert got["data"] == {"open": True}
    assert TS.match(got["timestamp"])
    assert got["namespace"] == "/ws/lockers"
    assert got["room"] == "kiosk-1"
    await assert_got_nothing(outsider)
    await member.close()
    await outsider.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_to_room_does_not_reach_the_same_room_in_another_namespace(server):
    member = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    elsewhere = await join(server, "/ws/help", rooms=("kiosk-1",))
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "door", {}) == 1
    assert (await member.recv())["room"] == "kiosk-1"
    await assert_got_nothing(elsewhere)
    await member.close()
    await elsewhere.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_to_room_fires_with_the_member_count(server):
    members = [await join(server, "/ws/lockers", rooms=("kiosk-1",)) for _ in range(2)]
    outsider = await join(server, "/ws/lockers")
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "evt", {}) == 2
    assert await server.service.events.broadcast_to_room("/ws/lockers", "empty-room", "evt", {}) == 0
    for joined in members + [outsider]:
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_to_an_empty_room_reaches_nobody(server):
    bystander = await join(server, "/ws/lockers")
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-9", "evt", {}) == 0
    await assert_got_nothing(bystander)
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_after_leave_room_room_broadcasts_no_longer_arrive(server):
    joined = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    await joined.send({"type": "leave_room", "room": "kiosk-1"})
    assert (await joined.recv())["type"] == "room_left"
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "evt", {}) == 0
    await assert_got_nothing(joined)
    await joined.close()


@pytest_twisted.ensureDeferred
async def test_room_member_gets_a_room_broadcast_and_a_namespace_broadcast_once_each(server):
    joined = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "evt", {"n": 1})
    await server.service.events.broadcast("/ws/lockers", "evt", {"n": 2})
    assert (await joined.recv())["data"] == {"n": 1}
    assert (await joined.recv())["data"] == {"n": 2}
    await assert_got_nothing(joined)
    await joined.close()


# -- envelope A: send ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_reaches_only_that_connection_as_envelope_a(server):
    target = await join(server, "/ws/lockers")
    other = await join(server, "/ws/lockers")
    elsewhere = await join(server, "/ws/help")
    delivered = await server.service.events.send(target.id, "notice", {"text": "hi"})
    assert delivered == 1
    got = await target.recv()
    assert list(got) == ["type", "data", "timestamp"], got
    assert got["type"] == "notice"
    assert got["data"] == {"text": "hi"}
    assert TS.match(got["timestamp"])
    await assert_got_nothing(other)
    await assert_got_nothing(elsewhere)
    for joined in (target, other, elsewhere):
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_send_finds_a_connection_in_any_namespace(server):
    target = await join(server, "/ws/events")
    assert await server.service.events.send(target.id, "notice", {}) == 1
    assert (await target.recv())["type"] == "notice"
    await target.close()


@pytest_twisted.ensureDeferred
async def test_send_to_an_unknown_connection_delivers_to_nobody(server):
    bystander = await join(server, "/ws/lockers")
    assert await server.service.events.send(str(uuid.uuid4()), "notice", {}) == 0
    await assert_got_nothing(bystander)
    await bystander.close()


# -- counts and stats -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_count_counts_a_namespace_all_namespaces_and_zero_for_unknown(server):
    assert server.hub.connection_count() == 0
    lockers = [await join(server, "/ws/lockers") for _ in range(2)]
    help_ = await join(server, "/ws/help")
    assert server.hub.connection_count("/ws/lockers") == 2
    assert server.hub.connection_count("/ws/help") == 1
    assert server.hub.connection_count("/ws/events") == 0
    assert server.hub.connection_count("/ws/nowhere") == 0
    assert server.hub.connection_count() == 3
    for joined in lockers + [help_]:
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_get_connection_stats_reflects_connections_and_rooms(server):
    a = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    b = await join(server, "/ws/lockers", rooms=("kiosk-1", "kiosk-2"))
    c = await join(server, "/ws/help")
    stats = server.hub.get_connection_stats()
    assert stats["total_connections"] == 3
    assert stats["namespaces"]["/ws/lockers"] == {
        "connections": 2,
        "rooms": {"locker_updates": 2, "kiosk-1": 2, "kiosk-2": 1},
    }
    assert stats["namespaces"]["/ws/help"] == {"connections": 1, "rooms": {"help_requests": 1}}
    assert stats["namespaces"]["/ws/events"] == {"connections": 0, "rooms": {}}
    assert stats["latency_metrics"]["connection_count"] == 3
    for joined in (a, b, c):
        await joined.close()


@pytest_twisted.ensureDeferred
async def test_get_connection_stats_latency_metrics_measure_deliveries(server):
    joined = await join(server, "/ws/lockers")
    await server.service.events.broadcast("/ws/lockers", "evt", {})
    await joined.recv()
    metrics = server.hub.get_connection_stats()["latency_metrics"]
    for key in ("median", "p95", "p99"):
        assert isinstance(metrics[key], (int, float)) and metrics[key] >= 0, metrics
    await joined.close()


# -- runtime namespaces ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_namespace_created_at_runtime_accepts_clients_and_broadcasts(server):
    server.hub.create_namespace("/ws/custom", require_auth=False)
    client = await server.connect("/ws/custom")
    first = await client.recv()
    assert first["type"] == "connection"
    assert first["data"]["namespace"] == "/ws/custom"
    assert first["data"]["authenticated"] is False
    assert server.hub.connection_count("/ws/custom") == 1
    assert await server.service.events.broadcast("/ws/custom", "evt", {"x": 1}) == 1
    got = await client.recv()
    assert got == {"type": "evt", "data": {"x": 1}, "timestamp": got["timestamp"], "namespace": "/ws/custom"}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_namespace_created_at_runtime_with_a_default_room_joins_it(server):
    server.hub.create_namespace("/ws/kiosks", require_auth=False, default_room="all_kiosks")
    client = await server.connect("/ws/kiosks")
    assert (await client.recv())["type"] == "connection"
    joined = await client.recv()
    assert joined == {"type": "room_joined", "data": {"room": "all_kiosks"}, "timestamp": joined["timestamp"]}
    assert await server.service.events.broadcast_to_room("/ws/kiosks", "all_kiosks", "evt", {}) == 1
    got = await client.recv()
    assert (got["type"], got["namespace"], got["room"]) == ("evt", "/ws/kiosks", "all_kiosks")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_create_namespace_rejects_a_path_outside_ws(server):
    for path in ("/custom", "/ws/", "/ws/a/b"):
        with pytest.raises(ValueError):
            server.hub.create_namespace(path)


# -- cleanup ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_that_disconnects_is_in_no_room_and_not_counted(server):
    joined = await join(server, "/ws/lockers", rooms=("kiosk-1", "kiosk-2"))
    stays = await join(server, "/ws/lockers", rooms=("kiosk-2",))
    connection = server_side(server, joined)
    assert rooms_holding(server, connection) == {
        ("/ws/lockers", "locker_updates"),
        ("/ws/lockers", "kiosk-1"),
        ("/ws/lockers", "kiosk-2"),
    }
    await joined.close()
    await within(connection.closed)
    assert rooms_holding(server, connection) == set()
    assert connection.rooms == set()
    assert joined.id not in server.hub.namespaces["/ws/lockers"].connections
    assert server.hub.connection_count("/ws/lockers") == 1
    assert server.hub.get_connection_stats()["namespaces"]["/ws/lockers"]["rooms"] == {
        "locker_updates": 1,
        "kiosk-2": 1,
    }
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "evt", {}) == 0
    await stays.close()


@pytest_twisted.ensureDeferred
async def test_client_that_drops_tcp_without_closing_is_in_no_room_and_not_counted(server):
    joined = await join(server, "/ws/lockers", rooms=("kiosk-1",))
    connection = server_side(server, joined)
    joined.client.connection.transport.abort()  # no close frame: the TCP connection just ends
    await within(connection.closed)
    assert rooms_holding(server, connection) == set()
    assert server.hub.connection_count() == 0


# -- raw WebSocket peers (for what `websockets` will not do) ---------------------------------


class RawPeer(asyncio.Protocol):
    """A WebSocket client written by hand on an asyncio TCP connection. It keeps every byte
    it receives (also when the server ends with a reset) and answers nothing, in particular
    no ping, unless the test sends it."""

    def __init__(self):
        self.buffer = bytearray()
        self.transport = None
        self.ended = False
        self._wakeup = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        self._wake()

    def connection_lost(self, exc):
        self.ended = True
        self._wake()

    def _wake(self):
        if not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _have(self, n: int) -> bool:
        """Wait (bounded) until `n` bytes are buffered; False if the connection ended first."""
        while len(self.buffer) < n:
            if self.ended:
                return False
            self._wakeup = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._wakeup, 5)
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    # -- the WebSocket client, by hand --------------------------------------------------

    @classmethod
    async def connect(cls, server, target):
        _, peer = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        peer.transport.write(
            (
                f"GET {target} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in peer.buffer:
            assert await peer._have(len(peer.buffer) + 1), bytes(peer.buffer)
        head = peer._take(peer.buffer.index(b"\r\n\r\n") + 4)
        assert head.startswith(b"HTTP/1.1 101"), head
        return peer

    async def read_frame(self):
        """(opcode, payload) of the next frame, or None once the connection has ended."""
        if not await self._have(2):
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        assert not b1 & 0x80, "server frames are not masked"
        length, offset = b1 & 0x7F, 2
        if length == 126:
            offset = 4
        elif length == 127:
            offset = 10
        if not await self._have(offset):
            return None
        if offset == 4:
            (length,) = struct.unpack("!H", self.buffer[2:4])
        elif offset == 10:
            (length,) = struct.unpack("!Q", self.buffer[2:10])
        if not await self._have(offset + length):
            return None
        self._take(offset)
        return b0 & 0x0F, self._take(length)

    async def read_json(self):
        """The next text message, skipping ping and pong frames."""
        while True:
            frame = await self.read_frame()
            assert frame is not None, "connection ended"
            opcode, payload = frame
            if opcode == 0x1:
                return json.loads(payload)
            assert opcode in (0x9, 0xA), frame

    def send_frame(self, payload: bytes, opcode=0x1, fin=True, rsv=0, masked=True):
        mask = os.urandom(4) if masked else b""
        header = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
        length = len(payload)
        mask_bit = 0x80 if masked else 0
        if length < 126:
            header += bytes([mask_bit | length])
        elif length < 65536:
            header += bytes([mask_bit | 126]) + struct.pack("!H", length)
        else:
            header += bytes([mask_bit | 127]) + struct.pack("!Q", length)
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if not self.ended:
            self.transport.write(header + mask + payload)

    async def frames_until_end(self):
        """Opcodes of every frame up to the end of the connection; a close frame is
        answered and recorded as (8, code)."""
        seen = []
        while (frame := await self.read_frame()) is not None:
            opcode, payload = frame
            if opcode == 0x8:
                seen.append((0x8, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005))
                self.send_frame(payload[:2], opcode=0x8)
            else:
                seen.append(opcode)
        return seen


@pytest_twisted.ensureDeferred
async def test_peer_that_never_answers_pings_is_dropped_and_removed_from_every_room(start_server):
    server = await start_server({"websocket.ping_interval": 0.2, "websocket.ping_timeout": 0.2})
    session_id = await server.session("kiosk-user", "kiosk", "kiosk-1")
    peer = await aio(RawPeer.connect(server, f"/ws/lockers?sessionId={session_id}"))
    first = await aio(peer.read_json())
    assert first["type"] == "connection"
    connection = server.hub.namespaces["/ws/lockers"].connections[first["data"]["connectionId"]]
    assert (await aio(peer.read_json()))["data"] == {"room": "locker_updates"}
    peer.send_frame(json.dumps({"type": "join_room", "room": "kiosk-1"}).encode())
    assert (await aio(peer.read_json()))["data"] == {"room": "kiosk-1"}
    assert rooms_holding(server, connection) == {("/ws/lockers", "locker_updates"), ("/ws/lockers", "kiosk-1")}
    healthy = await join(server, "/ws/lockers", rooms=("kiosk-1",))  # answers pings

    # From here the peer reads nothing and answers no ping.
    await within(connection.closed)
    assert rooms_holding(server, connection) == set()
    assert connection.rooms == set()
    assert server.hub.connection_count("/ws/lockers") == 1
    # Dropped (1006 semantics): pinged, then the TCP connection ends without a close frame.
    frames = await aio(peer.frames_until_end())
    assert 0x9 in frames, frames
    assert not [f for f in frames if isinstance(f, tuple)], frames
    # The client that answers pings is still there and still gets its room's broadcasts.
    assert await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "evt", {}) == 1
    assert (await healthy.recv())["room"] == "kiosk-1"
    await healthy.close()


MALFORMED = {
    "unmasked_frame": (dict(payload=b'{"type":"ping"}', masked=False), 1002),
    "reserved_opcode": (dict(payload=b"x", opcode=0x3), 1002),
    "rsv1_without_extension": (dict(payload=b'{"type":"ping"}', rsv=0b100), 1002),
    "continuation_without_start": (dict(payload=b"x", opcode=0x0), 1002),
    "fragmented_control_frame": (dict(payload=b"", opcode=0x9, fin=False), 1002),
    "invalid_utf8_text": (dict(payload=b'{"type":"\xff"}'), 1007),
}


@pytest.mark.parametrize("frame,code", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest_twisted.ensureDeferred
async def test_malformed_frame_closes_only_its_own_connection(server, frame, code):
    bystander = await join(server, "/ws/lockers")
    session_id = await server.session("mallory", "staff")
    peer = await aio(RawPeer.connect(server, f"/ws/lockers?sessionId={session_id}"))
    first = await aio(peer.read_json())
    connection = server.hub.namespaces["/ws/lockers"].connections[first["data"]["connectionId"]]
    peer.send_frame(**frame)
    frames = await aio(peer.frames_until_end())
    assert (0x8, code) in frames, frames
    await within(connection.closed)
    assert await server.service.events.broadcast("/ws/lockers", "after", {"n": 1}) == 1
    got = await bystander.recv()
    assert (got["type"], got["data"]) == ("after", {"n": 1})
    await assert_got_nothing(bystander)
    await bystander.close()


@pytest_twisted.ensureDeferred
async def test_the_autobahn_state_the_direct_frame_write_relies_on_is_there(server):
    # LegacyProtocol.send writes prepared frames to the transport itself when Autobahn has
    # nothing queued and no compression; an Autobahn that renames these must fail here.
    session_id = await server.session()
    client = await server.join("/ws/lockers", session_id)
    (connection,) = server.hub.namespaces["/ws/lockers"].connections.values()
    assert connection._perMessageCompress is None
    assert len(connection.send_queue) == 0
    await server.service.events.broadcast("/ws/lockers", "direct", {"n": 1})
    assert (await client.recv())["data"] == {"n": 1}


@pytest_twisted.ensureDeferred
async def test_creating_a_namespace_that_exists_keeps_its_clients_and_rooms(server):
    path = "/ws/lockers"
    client = await server.join(path, await server.session())
    server.hub.create_namespace(path, require_auth=False, default_room="elsewhere")
    assert await server.service.events.broadcast_to_room(path, "locker_updates", "evt", {}) == 1
    got = await client.recv()
    assert (got["type"], got["namespace"], got["room"]) == ("evt", path, "locker_updates")
    await client.close()
