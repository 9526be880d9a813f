"""Structured events on the wire (PROTOCOL.md sections 5-7): which namespaces and rooms
each event type reaches, envelope D, POST /api/websocket/events, and the Python emit API."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import pytest_twisted
import treq
from conftest import TS, ask, locker, parse_ts, until_pong

from eformws.core import wire
from eformws.events import ValidationError

ENVELOPE_KEYS = ["id", "seq", "epoch", "type", "timestamp", "namespace", "room", "version", "data"]

LOCKERS, HELP, EVENTS = "/ws/lockers", "/ws/help", "/ws/events"
DEFAULT_ROOM = {LOCKERS: "locker_updates", HELP: "help_requests", EVENTS: "system_events"}
CREATED_AT = "2024-01-15T10:30:00.000Z"


def help_requested_data(kiosk="kiosk-1"):
    return {"id": 17, "kiosk_id": kiosk, "category": "hardware_problem", "status": "open", "created_at": CREATED_AT}


def help_status_data():
    return {"id": 17, "old_status": "open", "new_status": "assigned"}


def command_data(kiosk="kiosk-1"):
    command = {"id": "cmd-9", "type": "open", "issued_by": "staff-3", "issued_at": CREATED_AT}
    if kiosk is not None:
        command["kioskId"] = kiosk
    return {"command": command, "result": {"success": True, "timestamp": CREATED_AT}}


def system_status_data():
    return {"component": "kiosk", "status": "online", "health_score": 99}


SAMPLES = {
    "locker_state_changed": locker,
    "help_requested": help_requested_data,
    "help_status_updated": help_status_data,
    "command_applied": command_data,
    "system_status": system_status_data,
}

DELIVERED_ON = {
    "locker_state_changed": {LOCKERS, EVENTS},
    "help_requested": {HELP, EVENTS},
    "help_status_updated": {HELP, EVENTS},
    "command_applied": {EVENTS},
    "system_status": {EVENTS},
}


# -- helpers ---------------------------------------------------------------------------


async def client_in(server, path, join=(), leave=()):
    """A staff client of `path` past `room_joined`, then in `join` and out of `leave`."""
    session_id = await server.session("bob", "staff")
    client = await server.join(path, session_id, rooms=join)
    for room in leave:
        reply = await ask(client, {"type": "leave_room", "room": room})
        assert (reply["type"], reply["data"]) == ("room_left", {"room": room}), reply
    return client


async def total_events(server) -> int:
    stats = await server.service.event_store.stats()
    return stats["total_events"]


async def post_event(server, body, token=None):
    """POST /api/websocket/events; (status, JSON body). `body` bytes are sent as they are."""
    headers = {b"Content-Type": [b"application/json"]}
    if token is not None:
        headers[b"Authorization"] = [f"Bearer {token}".encode()]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await treq.post(server.http("/api/websocket/events"), data=data, headers=headers, persistent=False)
    content = await treq.json_content(response)
    return response.code, content


# -- delivery rule: namespaces ---------------------------------------------------------------


@pytest.mark.parametrize("event_type", list(SAMPLES))
@pytest_twisted.ensureDeferred
async def test_event_reaches_each_namespace_it_is_delivered_on_exactly_once(server, event_type):
    clients = {path: await client_in(server, path) for path in (LOCKERS, HELP, EVENTS)}
    stored = await server.service.events.emit(event_type, SAMPLES[event_type]())
    for path, client in clients.items():
        expected = [stored] if path in DELIVERED_ON[event_type] else []
        assert await until_pong(client) == expected, path


@pytest.mark.parametrize("event_type", list(SAMPLES))
@pytest_twisted.ensureDeferred
async def test_event_skips_connections_in_no_addressed_room(server, event_type):
    """Clients that left their default room and are only in another kiosk's room."""
    bystanders = [
        await client_in(server, path, join=["kiosk-2"], leave=[DEFAULT_ROOM[path]]) for path in (LOCKERS, HELP, EVENTS)
    ]
    await server.service.events.emit(event_type, SAMPLES[event_type]())
    for client in bystanders:
        assert await until_pong(client) == []


@pytest_twisted.ensureDeferred
async def test_help_namespace_never_gets_locker_events_even_in_locker_rooms(server):
    client = await client_in(server, HELP, join=["locker_updates", "system_events", "kiosk-1"])
    await server.service.events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    assert await until_pong(client) == []


@pytest_twisted.ensureDeferred
async def test_lockers_namespace_never_gets_help_or_command_events_even_in_their_rooms(server):
    client = await client_in(server, LOCKERS, join=["help_requests", "system_events", "kiosk-1"])
    events = server.service.events
    await events.emit("help_requested", help_requested_data("kiosk-1"))
    await events.emit("help_status_updated", help_status_data())
    await events.emit("command_applied", command_data("kiosk-1"))
    await events.emit("system_status", system_status_data())
    assert await until_pong(client) == []


# -- delivery rule: kiosk rooms ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lockers_client_only_in_kiosk_room_gets_that_kiosks_locker_events_only(server):
    client = await client_in(server, LOCKERS, join=["kiosk-1"], leave=["locker_updates"])
    events = server.service.events
    mine = await events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    await events.emit("locker_state_changed", locker(kiosk="kiosk-2"))
    assert await until_pong(client) == [mine]


@pytest_twisted.ensureDeferred
async def test_help_client_only_in_kiosk_room_gets_that_kiosks_help_requests_only(server):
    client = await client_in(server, HELP, join=["kiosk-1"], leave=["help_requests"])
    events = server.service.events
    mine = await events.emit("help_requested", help_requested_data("kiosk-1"))
    await events.emit("help_requested", help_requested_data("kiosk-2"))
    await events.emit("help_status_updated", help_status_data())  # names no kiosk
    assert await until_pong(client) == [mine]


@pytest_twisted.ensureDeferred
async def test_events_client_only_in_kiosk_room_gets_command_applied_for_that_kiosk_only(server):
    client = await client_in(server, EVENTS, join=["kiosk-1"], leave=["system_events"])
    events = server.service.events
    mine = await events.emit("command_applied", command_data("kiosk-1"))
    await events.emit("command_applied", command_data("kiosk-2"))
    await events.emit("command_applied", command_data(None))
    await events.emit("system_status", system_status_data())
    assert await until_pong(client) == [mine]


@pytest_twisted.ensureDeferred
async def test_events_client_only_in_kiosk_room_gets_that_kiosks_locker_and_help_events(server):
    client = await client_in(server, EVENTS, join=["kiosk-1"], leave=["system_events"])
    events = server.service.events
    locker_change = await events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    await events.emit("locker_state_changed", locker(kiosk="kiosk-2"))
    help_request = await events.emit("help_requested", help_requested_data("kiosk-1"))
    assert await until_pong(client) == [locker_change, help_request]


@pytest_twisted.ensureDeferred
async def test_client_in_several_addressed_rooms_gets_the_event_once(server):
    lockers = await client_in(server, LOCKERS, join=["kiosk-1"])
    firehose = await client_in(server, EVENTS, join=["locker_updates", "kiosk-1"])
    stored = await server.service.events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    assert await until_pong(lockers) == [stored]
    assert await until_pong(firehose) == [stored]


@pytest_twisted.ensureDeferred
async def test_kiosk_room_named_like_a_default_room_still_delivers_once(server):
    client = await client_in(server, LOCKERS)
    stored = await server.service.events.emit("locker_state_changed", locker(kiosk="locker_updates"))
    assert await until_pong(client) == [stored]


# -- delivery never depends on who else is connected ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_clients_get_locker_events_while_another_events_client_is_in_locker_updates(server):
    plain = await client_in(server, EVENTS)
    in_locker_updates = await client_in(server, EVENTS, join=["locker_updates"])
    only_locker_updates = await client_in(server, EVENTS, join=["locker_updates"], leave=["system_events"])
    stored = await server.service.events.emit("locker_state_changed", locker())
    assert await until_pong(plain) == [stored]
    assert await until_pong(in_locker_updates) == [stored]
    assert await until_pong(only_locker_updates) == [stored]


@pytest_twisted.ensureDeferred
async def test_events_client_gets_locker_events_with_no_lockers_client_connected(server):
    client = await client_in(server, EVENTS)
    stored = await server.service.events.emit("locker_state_changed", locker())
    assert await until_pong(client) == [stored]


@pytest_twisted.ensureDeferred
async def test_a_kiosk_room_member_does_not_take_the_event_from_default_room_members(server):
    default = await client_in(server, LOCKERS)
    kiosk_only = await client_in(server, LOCKERS, join=["kiosk-1"], leave=["locker_updates"])
    stored = await server.service.events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    assert await until_pong(default) == [stored]
    assert await until_pong(kiosk_only) == [stored]


# -- envelope D --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_envelope_keys_are_in_protocol_order(server):
    client = await client_in(server, LOCKERS)
    await server.service.events.emit("locker_state_changed", locker())
    [message] = await until_pong(client)
    assert list(message) == ENVELOPE_KEYS


@pytest_twisted.ensureDeferred
async def test_envelope_on_ws_events_carries_the_home_namespace_and_room(server):
    client = await client_in(server, EVENTS)
    events = server.service.events
    await events.emit("locker_state_changed", locker())
    await events.emit("help_requested", help_requested_data())
    await events.emit("system_status", system_status_data())
    got = await until_pong(client)
    assert [(m["namespace"], m["room"]) for m in got] == [
        (LOCKERS, "locker_updates"),
        (HELP, "help_requests"),
        (EVENTS, "system_events"),
    ]


@pytest_twisted.ensureDeferred
async def test_envelope_has_uuid4_id_and_version_1_0_0(server):
    client = await client_in(server, EVENTS)
    await server.service.events.emit("system_status", system_status_data())
    [message] = await until_pong(client)
    assert uuid.UUID(message["id"]).version == 4
    assert str(uuid.UUID(message["id"])) == message["id"]
    assert message["version"] == "1.0.0"


@pytest_twisted.ensureDeferred
async def test_envelope_timestamp_is_js_iso_creation_time(server):
    client = await client_in(server, EVENTS)
    before = time.time()
    await server.service.events.emit("system_status", system_status_data())
    after = time.time()
    [message] = await until_pong(client)
    assert TS.match(message["timestamp"]), message["timestamp"]
    assert int(before * 1000) / 1000 <= parse_ts(message["timestamp"]) <= after


@pytest_twisted.ensureDeferred
async def test_envelope_ids_differ_between_events(server):
    events = server.service.events
    first = await events.emit("system_status", system_status_data())
    second = await events.emit("system_status", system_status_data())
    assert first["id"] != second["id"]


@pytest_twisted.ensureDeferred
async def test_seq_is_a_string_strictly_increasing_in_emit_order(server):
    events = server.service.events
    pending = [events.emit(event_type, SAMPLES[event_type]()) for event_type in SAMPLES]  # one burst
    pending += [events.emit("system_status", system_status_data())]
    stored = [await d for d in pending]
    assert all(isinstance(e["seq"], str) and e["seq"].isdigit() for e in stored)
    seqs = [int(e["seq"]) for e in stored]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), seqs


@pytest_twisted.ensureDeferred
async def test_events_reach_a_client_in_seq_order(server):
    client = await client_in(server, EVENTS)
    events = server.service.events
    pending = [events.emit(event_type, SAMPLES[event_type]()) for event_type in SAMPLES]
    stored = [await d for d in pending]
    got = await until_pong(client)
    assert [m["seq"] for m in got] == [e["seq"] for e in stored]


@pytest_twisted.ensureDeferred
async def test_emit_fires_with_exactly_the_envelope_clients_got(server):
    client = await client_in(server, LOCKERS)
    stored = await server.service.events.emit_locker_state_changed(
        "kiosk-1:12", "closed", "open", "kiosk-1", user_id="u-7", metadata={"ownerType": "rfid"}
    )
    assert list(stored) == ENVELOPE_KEYS
    assert await until_pong(client, raw=True) == [wire.dumps(stored).decode("utf-8")]


# -- POST /api/websocket/events ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_post_event_with_admin_session_answers_201_with_the_stored_event(server):
    session_id = await server.session("root", "admin")
    code, body = await post_event(server, {"type": "system_status", "data": system_status_data()}, session_id)
    assert code == 201
    assert list(body) == ENVELOPE_KEYS
    assert uuid.UUID(body["id"]).version == 4 and body["seq"].isdigit()
    assert body["data"] == system_status_data()
    assert await server.service.event_store.recent(None, 3600, 10) == [body]


@pytest_twisted.ensureDeferred
async def test_post_event_with_api_token_answers_201(start_server):
    server = await start_server({"auth.api_tokens": ["tok"]})
    code, body = await post_event(server, {"type": "system_status", "data": system_status_data()}, "tok")
    assert code == 201
    assert body["type"] == "system_status" and body["seq"].isdigit()


@pytest_twisted.ensureDeferred
async def test_posted_event_reaches_clients_as_stored(server):
    client = await client_in(server, LOCKERS)
    session_id = await server.session("root", "admin")
    code, body = await post_event(server, {"type": "locker_state_changed", "data": locker()}, session_id)
    assert code == 201
    assert await until_pong(client) == [body]


@pytest_twisted.ensureDeferred
async def test_post_event_without_credentials_answers_401_and_stores_nothing(server):
    code, body = await post_event(server, {"type": "system_status", "data": system_status_data()})
    assert code == 401
    assert body["statusCode"] == 401
    assert await total_events(server) == 0


@pytest_twisted.ensureDeferred
async def test_post_event_with_unknown_bearer_answers_401(start_server):
    server = await start_server({"auth.api_tokens": ["tok"]})
    code, _ = await post_event(server, {"type": "system_status", "data": system_status_data()}, "not-a-token")
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_post_event_with_staff_session_answers_403_and_stores_nothing(server):
    session_id = await server.session("bob", "staff")
    code, body = await post_event(server, {"type": "system_status", "data": system_status_data()}, session_id)
    assert code == 403
    assert body["statusCode"] == 403
    assert await total_events(server) == 0


@pytest_twisted.ensureDeferred
async def test_post_invalid_event_answers_400_naming_the_field(server):
    session_id = await server.session("root", "admin")
    data = dict(locker(), oldState="shut")
    code, body = await post_event(server, {"type": "locker_state_changed", "data": data}, session_id)
    assert code == 400
    assert body["statusCode"] == 400 and body["error"] == "Bad Request"
    assert body["field"] == "data.oldState"
    assert "data.oldState" in body["message"]


@pytest_twisted.ensureDeferred
async def test_post_unknown_event_type_answers_400_naming_type(server):
    session_id = await server.session("root", "admin")
    code, body = await post_event(server, {"type": "locker_exploded", "data": {}}, session_id)
    assert code == 400
    assert body["field"] == "type"


@pytest_twisted.ensureDeferred
async def test_post_invalid_event_is_neither_stored_nor_delivered(server):
    client = await client_in(server, EVENTS)
    session_id = await server.session("root", "admin")
    before = await total_events(server)
    data = dict(system_status_data(), health_score=101)
    code, body = await post_event(server, {"type": "system_status", "data": data}, session_id)
    assert (code, body["field"]) == (400, "data.health_score")
    assert await total_events(server) == before
    assert await until_pong(client) == []


@pytest_twisted.ensureDeferred
async def test_post_event_with_infinity_in_metrics_answers_400_and_stores_nothing(server):
    """JSON bodies may spell Infinity; such a value could be stored but never sent."""
    client = await client_in(server, EVENTS)
    session_id = await server.session("root", "admin")
    raw = b'{"type":"system_status","data":{"component":"kiosk","status":"online","health_score":5,"metrics":{"cpu_usage":Infinity}}}'
    code, body = await post_event(server, raw, session_id)
    assert (code, body["field"]) == (400, "data.metrics.cpu_usage")
    assert await total_events(server) == 0
    assert await until_pong(client) == []


# -- the Python API: what each emit_* builds ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_emit_locker_state_changed_builds_locker_data(server):
    stored = await server.service.events.emit_locker_state_changed(
        "kiosk-1:12", "closed", "open", "kiosk-1", user_id="u-7", reason="assign", metadata={"ownerType": "rfid"}
    )
    assert stored["type"] == "locker_state_changed"
    assert stored["data"] == {
        "lockerId": "kiosk-1:12",
        "oldState": "closed",
        "newState": "open",
        "kioskId": "kiosk-1",
        "userId": "u-7",
        "reason": "assign",
        "metadata": {"ownerType": "rfid"},
    }
    assert list(stored["data"]) == ["lockerId", "oldState", "newState", "kioskId", "userId", "reason", "metadata"]


@pytest_twisted.ensureDeferred
async def test_emit_locker_state_changed_leaves_out_optional_arguments_left_none(server):
    stored = await server.service.events.emit_locker_state_changed("kiosk-1:12", "open", "closed", "kiosk-1")
    assert stored["data"] == {"lockerId": "kiosk-1:12", "oldState": "open", "newState": "closed", "kioskId": "kiosk-1"}


@pytest_twisted.ensureDeferred
async def test_emit_help_requested_defaults_priority_to_medium(server):
    stored = await server.service.events.emit_help_requested(help_requested_data())
    assert stored["type"] == "help_requested"
    assert stored["data"] == dict(help_requested_data(), priority="medium")


@pytest_twisted.ensureDeferred
async def test_emit_help_requested_uses_the_priority_given(server):
    stored = await server.service.events.emit_help_requested(help_requested_data(), priority="urgent")
    assert stored["data"]["priority"] == "urgent"


@pytest_twisted.ensureDeferred
async def test_emit_help_requested_passes_other_keys_through(server):
    request = dict(help_requested_data(), locker_no=12, note="door stuck", floor="2")
    stored = await server.service.events.emit_help_requested(request)
    assert stored["data"] == dict(request, priority="medium")


@pytest_twisted.ensureDeferred
async def test_emit_help_status_updated_sets_updated_at_to_server_time(server):
    before = time.time()
    stored = await server.service.events.emit_help_status_updated(17, "open", "resolved", agent_id="staff-3")
    after = time.time()
    data = stored["data"]
    assert {k: v for k, v in data.items() if k != "updated_at"} == {
        "id": 17,
        "old_status": "open",
        "new_status": "resolved",
        "agent_id": "staff-3",
    }
    assert TS.match(data["updated_at"])
    assert int(before * 1000) / 1000 <= parse_ts(data["updated_at"]) <= after


@pytest_twisted.ensureDeferred
async def test_emit_help_status_updated_leaves_out_optional_arguments_left_none(server):
    stored = await server.service.events.emit_help_status_updated(17, "open", "assigned")
    assert sorted(stored["data"]) == ["id", "new_status", "old_status", "updated_at"]


@pytest_twisted.ensureDeferred
async def test_emit_command_applied_builds_command_and_result(server):
    data = command_data("kiosk-1")
    data["result"].update(message="opened", execution_time_ms=250)
    stored = await server.service.events.emit_command_applied(data["command"], data["result"])
    assert stored["type"] == "command_applied"
    assert stored["data"] == data


@pytest_twisted.ensureDeferred
async def test_emit_system_status_builds_status_data(server):
    stored = await server.service.events.emit_system_status(
        "kiosk", "degraded", 62.5, metrics={"cpu_usage": 91.5}, message="hot"
    )
    assert stored["type"] == "system_status"
    assert stored["data"] == {
        "component": "kiosk",
        "status": "degraded",
        "health_score": 62.5,
        "metrics": {"cpu_usage": 91.5},
        "message": "hot",
    }


@pytest_twisted.ensureDeferred
async def test_emit_system_status_leaves_out_optional_arguments_left_none(server):
    stored = await server.service.events.emit_system_status("gateway", "online", 100)
    assert stored["data"] == {"component": "gateway", "status": "online", "health_score": 100}


@pytest_twisted.ensureDeferred
async def test_bad_emit_fails_with_validation_error_naming_the_field(server):
    with pytest.raises(ValidationError) as failure:
        await server.service.events.emit_locker_state_changed("kiosk-1:12", "shut", "open", "kiosk-1")
    assert failure.value.field == "data.oldState"


@pytest_twisted.ensureDeferred
async def test_bad_emit_is_neither_stored_nor_delivered(server):
    client = await client_in(server, EVENTS)
    events = server.service.events
    for call in (
        lambda: events.emit_system_status("toaster", "online", 10),
        lambda: events.emit_help_requested(dict(help_requested_data(), id="17")),
        lambda: events.emit_help_status_updated(17, "open", "closed"),
        lambda: events.emit_command_applied({"id": "c"}, {"success": True, "timestamp": CREATED_AT}),
        lambda: events.emit_locker_state_changed("kiosk-1:12", "open", "closed", ""),
    ):
        with pytest.raises(ValidationError):
            await call()
    assert await total_events(server) == 0
    assert await until_pong(client) == []


@pytest_twisted.ensureDeferred
async def test_emit_with_a_value_json_cannot_carry_fails_and_stores_nothing(server):
    client = await client_in(server, EVENTS)
    with pytest.raises(ValidationError) as failure:
        await server.service.events.emit_system_status("kiosk", "online", 50, metrics={"cpu_usage": float("inf")})
    assert failure.value.field == "data.metrics.cpu_usage"
    assert await total_events(server) == 0
    assert await until_pong(client) == []


@pytest_twisted.ensureDeferred
async def test_emit_help_requested_with_a_non_object_fails_naming_data(server):
    with pytest.raises(ValidationError) as failure:
        await server.service.events.emit_help_requested(["not", "a", "dict"])
    assert failure.value.field == "data"


# -- the module-level API ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_module_level_emit_reaches_clients_of_the_running_service(server):
    from eformws.emitter import emit_system_status

    client = await client_in(server, EVENTS)
    stored = await emit_system_status("gateway", "online", 100)
    assert await until_pong(client) == [stored]


@pytest_twisted.ensureDeferred
async def test_module_level_emit_fails_with_runtime_error_when_no_service_runs(start_server):
    from eformws.emitter import emit_system_status

    server = await start_server()
    await server.service.stopService()
    with pytest.raises(RuntimeError):
        await emit_system_status("gateway", "online", 100)
