"""Client -> server messages on the wire (PROTOCOL.md section 4): rooms, ping, errors,
and the limits (rooms per connection, room ACL, inbound rate, message size)."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_twisted

from conftest import TS, aio, ask, assert_got_nothing



async def lockers_client(server, role="admin", kiosk=None, user="alice"):
    """A /ws/lockers client past `connection` and `room_joined`."""
    session_id = await server.session(user, role, kiosk)
    return await server.join("/ws/lockers", session_id)


def assert_error(reply, code, message=None):
    assert list(reply) == ["type", "data", "timestamp"], reply
    assert reply["type"] == "error", reply
    assert reply["data"]["code"] == code, reply
    assert isinstance(reply["data"]["message"], str) and reply["data"]["message"], reply
    if message is not None:
        assert reply["data"]["message"] == message, reply
    assert TS.match(reply["timestamp"]), reply


# -- join_room / leave_room ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_room_with_top_level_room_replies_room_joined(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "join_room", "room": "kiosk-1"})
    assert list(reply) == ["type", "data", "timestamp"]
    assert reply["type"] == "room_joined"
    assert reply["data"] == {"room": "kiosk-1"}
    assert TS.match(reply["timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_join_room_with_room_in_data_replies_room_joined(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "join_room", "data": {"room": "kiosk-1"}})
    assert reply == {"type": "room_joined", "data": {"room": "kiosk-1"}, "timestamp": reply["timestamp"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_repeated_join_room_replies_room_joined_again(server):
    client = await lockers_client(server)
    first = await ask(client, {"type": "join_room", "room": "kiosk-1"})
    second = await ask(client, {"type": "join_room", "room": "kiosk-1"})
    assert (first["type"], first["data"]) == ("room_joined", {"room": "kiosk-1"})
    assert (second["type"], second["data"]) == ("room_joined", {"room": "kiosk-1"})
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leave_room_with_top_level_room_replies_room_left(server):
    client = await lockers_client(server)
    await ask(client, {"type": "join_room", "room": "kiosk-1"})
    reply = await ask(client, {"type": "leave_room", "room": "kiosk-1"})
    assert list(reply) == ["type", "data", "timestamp"]
    assert reply["type"] == "room_left"
    assert reply["data"] == {"room": "kiosk-1"}
    assert TS.match(reply["timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leave_room_with_room_in_data_replies_room_left(server):
    client = await lockers_client(server)
    await ask(client, {"type": "join_room", "data": {"room": "kiosk-1"}})
    reply = await ask(client, {"type": "leave_room", "data": {"room": "kiosk-1"}})
    assert reply == {"type": "room_left", "data": {"room": "kiosk-1"}, "timestamp": reply["timestamp"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leave_room_when_not_a_member_replies_room_left(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "leave_room", "room": "never-joined"})
    assert reply == {"type": "room_left", "data": {"room": "never-joined"}, "timestamp": reply["timestamp"]}
    await client.close()


# -- ping --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ping_with_data_timestamp_number_echoes_the_number(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "ping", "data": {"timestamp": 1705314600000}})
    assert reply["type"] == "pong"
    assert reply["data"]["timestamp"] == 1705314600000
    assert type(reply["data"]["timestamp"]) is int
    assert TS.match(reply["data"]["server_timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_with_data_timestamp_string_echoes_the_string(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "ping", "data": {"timestamp": "1705314600000"}})
    assert reply["type"] == "pong"
    assert reply["data"]["timestamp"] == "1705314600000"
    assert TS.match(reply["data"]["server_timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_with_top_level_timestamp_number_echoes_the_number(server):
    client = await lockers_client(server)
    raw_reply = await aio(_ask_raw(client, '{"type":"ping","timestamp":12.5}'))
    reply = json.loads(raw_reply)
    assert reply["type"] == "pong"
    # Echoed as a JSON number, not as a string.
    assert '"data":{"timestamp":12.5,' in raw_reply
    assert reply["data"]["timestamp"] == 12.5
    assert TS.match(reply["data"]["server_timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_with_top_level_timestamp_string_echoes_the_string(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "ping", "timestamp": "2024-01-15T10:30:00.000Z"})
    assert reply["type"] == "pong"
    assert reply["data"]["timestamp"] == "2024-01-15T10:30:00.000Z"
    assert TS.match(reply["data"]["server_timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_with_explicit_null_timestamp_echoes_null(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "ping", "data": {"timestamp": None}})
    assert reply["type"] == "pong"
    assert "timestamp" in reply["data"] and reply["data"]["timestamp"] is None
    assert TS.match(reply["data"]["server_timestamp"])
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ping_without_timestamp_gets_the_server_time(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "ping"})
    assert list(reply) == ["type", "data", "timestamp"]
    assert reply["type"] == "pong"
    assert TS.match(reply["data"]["timestamp"]), reply
    assert TS.match(reply["data"]["server_timestamp"]), reply
    assert TS.match(reply["timestamp"]), reply
    await client.close()


async def _ask_raw(client, text):
    await client.connection.send(text)
    return await client.connection.recv()


# -- invalid messages ----------------------------------------------------------------------


INVALID = {
    "not_json": "this is not json",
    "truncated_json": '{"type":"ping"',
    "json_null": "null",
    "json_array": '[{"type":"ping"}]',
    "json_number": "42",
    "json_string": '"ping"',
    "object_without_type": '{"data":{"timestamp":1}}',
    "non_string_type": '{"type":7}',
    "null_type": '{"type":null}',
    "nan_literal": '{"type":"ping","data":{"timestamp":NaN}}',
    "infinity_literal": '{"type":"ping","timestamp":Infinity}',
    "integer_beyond_a_double": '{"type":"ping","data":{"timestamp":1' + "0" * 400 + '}}',
}


@pytest.mark.parametrize("payload", list(INVALID.values()), ids=list(INVALID))
@pytest_twisted.ensureDeferred
async def test_invalid_message_gets_invalid_message_error_and_stays_open(server, payload):
    client = await lockers_client(server)
    reply = await ask(client, payload)
    assert_error(reply, "invalid_message", "Invalid message format")
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_binary_frame_gets_invalid_message_error_and_stays_open(server):
    client = await lockers_client(server)
    reply = await ask(client, b"\xff\xfe\x00garbage")
    assert_error(reply, "invalid_message", "Invalid message format")
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_binary_frame_with_a_json_object_is_processed_like_text(server):
    client = await lockers_client(server)
    reply = await ask(client, b'{"type":"join_room","room":"kiosk-1"}')
    assert reply == {"type": "room_joined", "data": {"room": "kiosk-1"}, "timestamp": reply["timestamp"]}
    pong = await ask(client, b'{"type":"ping","data":{"timestamp":5}}')
    assert pong["type"] == "pong" and pong["data"]["timestamp"] == 5
    await client.close()


@pytest_twisted.ensureDeferred
async def test_unknown_type_gets_unknown_type_error_and_stays_open(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "subscribe", "data": {}})
    assert_error(reply, "unknown_type", "Unknown message type: subscribe")
    await assert_got_nothing(client)
    await client.close()


# -- invalid rooms -------------------------------------------------------------------------


INVALID_ROOMS = {
    "missing": ({"type": "join_room"}, "Room is required"),
    "missing_in_data": ({"type": "join_room", "data": {}}, "Room is required"),
    "null": ({"type": "join_room", "room": None}, "Room is required"),
    "number": ({"type": "join_room", "room": 1}, "Room must be a string"),
    "object_in_data": ({"type": "join_room", "data": {"room": {"id": "kiosk-1"}}}, "Room must be a string"),
    "empty": ({"type": "join_room", "room": ""}, "Room must not be empty"),
    "129_characters": ({"type": "join_room", "room": "r" * 129}, "Room must be at most 128 characters"),
    "newline": ({"type": "join_room", "room": "kiosk\n1"}, "Room must not contain control characters"),
    "nul": ({"type": "join_room", "data": {"room": "kiosk\x001"}}, "Room must not contain control characters"),
    "delete": ({"type": "join_room", "room": "kiosk\x7f"}, "Room must not contain control characters"),
}


@pytest.mark.parametrize("message,text", list(INVALID_ROOMS.values()), ids=list(INVALID_ROOMS))
@pytest_twisted.ensureDeferred
async def test_join_room_with_invalid_room_gets_invalid_room_error_saying_why(server, message, text):
    client = await lockers_client(server)
    reply = await ask(client, message)
    assert_error(reply, "invalid_room", text)
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leave_room_with_invalid_room_gets_invalid_room_error(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "leave_room", "room": ""})
    assert_error(reply, "invalid_room", "Room must not be empty")
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_join_room_with_128_characters_is_accepted(server):
    client = await lockers_client(server)
    room = "r" * 128
    reply = await ask(client, {"type": "join_room", "room": room})
    assert reply == {"type": "room_joined", "data": {"room": room}, "timestamp": reply["timestamp"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_join_room_with_non_ascii_room_is_accepted(server):
    client = await lockers_client(server)
    reply = await ask(client, {"type": "join_room", "room": "kiosk-ü-🔒"})
    assert reply == {"type": "room_joined", "data": {"room": "kiosk-ü-🔒"}, "timestamp": reply["timestamp"]}
    await client.close()


# -- room limit ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_beyond_the_room_limit_gets_room_limit_and_stays_open(start_server):
    server = await start_server({"websocket.max_rooms": 3})
    client = await lockers_client(server)  # in locker_updates: 1 of 3
    assert (await ask(client, {"type": "join_room", "room": "a"}))["type"] == "room_joined"
    assert (await ask(client, {"type": "join_room", "room": "b"}))["type"] == "room_joined"
    reply = await ask(client, {"type": "join_room", "room": "c"})
    assert_error(reply, "room_limit")
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_rejoining_a_room_at_the_room_limit_is_accepted(start_server):
    server = await start_server({"websocket.max_rooms": 3})
    client = await lockers_client(server)
    await ask(client, {"type": "join_room", "room": "a"})
    await ask(client, {"type": "join_room", "room": "b"})
    for room in ("a", "locker_updates"):
        reply = await ask(client, {"type": "join_room", "room": room})
        assert reply == {"type": "room_joined", "data": {"room": room}, "timestamp": reply["timestamp"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leaving_a_room_at_the_room_limit_frees_a_place(start_server):
    server = await start_server({"websocket.max_rooms": 3})
    client = await lockers_client(server)
    await ask(client, {"type": "join_room", "room": "a"})
    await ask(client, {"type": "join_room", "room": "b"})
    assert (await ask(client, {"type": "leave_room", "room": "a"}))["type"] == "room_left"
    reply = await ask(client, {"type": "join_room", "room": "c"})
    assert reply == {"type": "room_joined", "data": {"room": "c"}, "timestamp": reply["timestamp"]}
    await client.close()


# -- room ACL --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_kiosk_session_may_join_its_own_kiosk_room(server):
    client = await lockers_client(server, "kiosk", "kiosk-1", user="kiosk-1")
    reply = await ask(client, {"type": "join_room", "room": "kiosk-1"})
    assert reply == {"type": "room_joined", "data": {"room": "kiosk-1"}, "timestamp": reply["timestamp"]}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_kiosk_session_joining_another_kiosk_room_gets_forbidden_and_stays_open(server):
    client = await lockers_client(server, "kiosk", "kiosk-1", user="kiosk-1")
    reply = await ask(client, {"type": "join_room", "room": "kiosk-2"})
    assert_error(reply, "forbidden")
    await assert_got_nothing(client)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_kiosk_session_without_kiosk_id_joining_a_kiosk_room_gets_forbidden(server):
    client = await lockers_client(server, "kiosk", None, user="kiosk-x")
    reply = await ask(client, {"type": "join_room", "room": "kiosk-1"})
    assert_error(reply, "forbidden")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_staff_session_may_join_any_kiosk_room(server):
    client = await lockers_client(server, "staff", user="bob")
    for room in ("kiosk-1", "kiosk-2", "anything"):
        reply = await ask(client, {"type": "join_room", "room": room})
        assert reply == {"type": "room_joined", "data": {"room": room}, "timestamp": reply["timestamp"]}
    await client.close()


# -- inbound rate limit ------------------------------------------------------------------------


RATE = {"websocket.rate_limit": 1, "websocket.rate_burst": 5, "websocket.rate_limit_close_after": 10}


@pytest_twisted.ensureDeferred
async def test_message_burst_past_the_rate_limit_gets_rate_limited_then_close_1008(start_server):
    server = await start_server(RATE)
    client = await lockers_client(server)
    pings = [{"type": "ping", "data": {"timestamp": n}} for n in range(40)]
    replies, close = await client.flood([json.dumps(m) for m in pings])
    kinds = [r["type"] for r in replies]
    # The burst is answered, then each message over it gets `rate_limited`, then the
    # sustained excess (10 refusals in a row) closes the connection.
    assert kinds[:5] == ["pong"] * 5, kinds
    assert [r["data"]["timestamp"] for r in replies[:5]] == [0, 1, 2, 3, 4]
    errors = replies[5:]
    assert len(errors) == 9, kinds
    for reply in errors:
        assert_error(reply, "rate_limited")
    assert close == (1008, "Rate limit exceeded")


@pytest_twisted.ensureDeferred
async def test_client_under_the_rate_limit_is_never_limited(start_server):
    server = await start_server({"websocket.rate_limit": 50, "websocket.rate_burst": 2, "websocket.rate_limit_close_after": 3})
    client = await lockers_client(server)
    # 12 messages at half the allowed rate: six times the burst, never limited.
    for n in range(12):
        reply = await ask(client, {"type": "ping", "data": {"timestamp": n}})
        assert reply["type"] == "pong", reply
        assert reply["data"]["timestamp"] == n
        await aio(asyncio.sleep(1 / 25))  # pacing the client, not waiting for a condition
    await client.close()


@pytest_twisted.ensureDeferred
async def test_burst_within_the_burst_size_is_never_limited(start_server):
    server = await start_server(RATE)
    client = await lockers_client(server)
    for n in range(5):
        await client.send({"type": "ping", "data": {"timestamp": n}})
    for n in range(5):
        reply = await client.recv()
        assert (reply["type"], reply["data"]["timestamp"]) == ("pong", n)
    await client.close()


# -- message size limit --------------------------------------------------------------------------


def ping_of_size(size: int) -> str:
    text = json.dumps({"type": "ping", "data": {"timestamp": 1, "pad": ""}})
    text = json.dumps({"type": "ping", "data": {"timestamp": 1, "pad": "x" * (size - len(text))}})
    assert len(text.encode("utf-8")) == size
    return text


@pytest_twisted.ensureDeferred
async def test_message_over_the_size_limit_closes_1009(server):
    client = await lockers_client(server)
    await client.send(ping_of_size(70_000))
    code, _reason = await client.closed()
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_message_under_the_size_limit_is_processed(server):
    client = await lockers_client(server)
    reply = await ask(client, ping_of_size(60_000))
    assert reply["type"] == "pong" and reply["data"]["timestamp"] == 1
    await client.close()


@pytest_twisted.ensureDeferred
async def test_message_over_the_size_limit_leaves_other_clients_connected(server):
    offender = await lockers_client(server)
    (offender_side,) = server.hub.namespaces["/ws/lockers"].connections.values()
    bystander = await lockers_client(server, user="bob")
    await offender.send(ping_of_size(70_000))
    assert (await offender.closed())[0] == 1009
    await offender_side.closed
    delivered = await server.service.events.broadcast("/ws/lockers", "after", {"n": 1})
    assert delivered == 1
    got = await bystander.recv()
    assert (got["type"], got["data"]) == ("after", {"n": 1})
    await assert_got_nothing(bystander)
    await bystander.close()
