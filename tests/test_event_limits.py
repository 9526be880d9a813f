"""One validation of event data for every way in (HTTP, WAMP, Python): nesting and size are
refused before anything is stored; and one bad entry in the log (written by an older
version or by hand) never fails a read: replay, resume and health leave it out."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import pytest_twisted
import treq
from conftest import locker
from wamp_peer import call_error
from wamp_peer import join as wamp_join

from eformws.core import wire
from eformws.events import ValidationError

LOCKERS = "/ws/lockers"


def nested(depth: int):
    value: dict = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


async def stored_count(server) -> int:
    return (await server.service.event_store.stats())["total_events"]


@pytest_twisted.ensureDeferred
async def test_wamp_emit_nested_deeper_than_128_is_refused_invalid_event_and_not_stored(server):
    peer = await wamp_join(server, role="admin")
    error = await call_error(peer.call("eform.emit", "locker_state_changed", locker(metadata=nested(200))))
    assert error.error == "eform.error.invalid_event"
    assert error.args[0] == "data must not nest arrays and objects more than 128 levels deep"
    assert await stored_count(server) == 0
    peer.leave()


@pytest_twisted.ensureDeferred
async def test_python_emit_nested_deeper_than_128_fails_validation_and_is_not_stored(server):
    with pytest.raises(ValidationError, match="more than 128 levels deep"):
        await server.service.events.emit("locker_state_changed", locker(metadata=nested(200)))
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_data_over_max_data_bytes_is_refused_on_http_wamp_and_python(start_server):
    server = await start_server({"events.max_data_bytes": 1024, "auth.api_tokens": ["t"]})
    big = locker(reason="x" * 2000)
    answer = await treq.post(server.http("/api/websocket/events"), json={"type": "locker_state_changed", "data": big},
                             headers={"Authorization": "Bearer t"}, persistent=False)
    body = json.loads(await answer.content())
    assert (answer.code, body["field"]) == (400, "data")
    assert body["message"].startswith("data must be at most 1024 bytes as JSON")
    peer = await wamp_join(server, role="admin")
    error = await call_error(peer.call("eform.emit", "locker_state_changed", big))
    assert error.error == "eform.error.invalid_event"
    peer.leave()
    with pytest.raises(ValidationError, match="at most 1024 bytes"):
        await server.service.events.emit("locker_state_changed", big)
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_wamp_broadcast_nested_deeper_than_128_is_refused_invalid_argument(server):
    peer = await wamp_join(server, role="admin")
    error = await call_error(peer.call("eform.broadcast", LOCKERS, "tick", {"deep": nested(200)}))
    assert error.error == "wamp.error.invalid_argument"
    peer.leave()


def too_deep(first: dict) -> str:
    """An entry no version of eformws writes any more: nested past what can be decoded again."""
    return '{"d":' * 990 + "1" + "}" * 990


def not_sendable(first: dict) -> str:
    """An entry that decodes but cannot be framed: NaN (json.loads takes it, the
    allow_nan=False encoder refuses it)."""
    return json.dumps({**first, "data": {**first["data"], "metadata": {"weight": math.nan}}})


@pytest.mark.parametrize("bad_entry", [too_deep, not_sendable], ids=["too_deep_to_decode", "decodes_but_not_sendable"])
@pytest_twisted.ensureDeferred
async def test_a_bad_entry_in_the_log_is_left_out_of_replay_resume_and_health(start_server, tmp_path, bad_entry):
    server = await start_server({})
    first = await server.service.events.emit("locker_state_changed", locker())
    second = await server.service.events.emit("locker_state_changed", locker(lockerId="L2"))
    with sqlite3.connect(tmp_path / "eformws.db") as db:  # the test configuration's file
        db.execute("UPDATE events SET envelope = ? WHERE seq = ?", (bad_entry(first), int(first["seq"])))
    session_id = await server.session(role="staff")

    replayed = await server.join(LOCKERS, session_id)
    assert (await replayed.recv())["seq"] == second["seq"]

    resumed = await server.connect(f"{LOCKERS}?sessionId={session_id}&since=0&epoch={first['epoch']}")
    messages = [await resumed.recv() for _ in range(4)]
    assert [m["type"] for m in messages] == ["connection", "room_joined", "locker_state_changed", "resumed"]
    assert messages[2]["seq"] == second["seq"]
    assert messages[3]["data"]["recovered"] is True

    health = await treq.get(server.http("/api/websocket/health"), headers={"Authorization": f"Bearer {session_id}"},
                           persistent=False)
    assert health.code == 200
    assert [e["seq"] for e in json.loads(await health.content())["events"]] == [second["seq"]]
    for client in (replayed, resumed):
        await client.close()



@pytest_twisted.ensureDeferred
async def test_data_nested_exactly_128_deep_is_accepted_and_comes_back_on_resume(server):
    first = await server.service.events.emit("locker_state_changed", locker())
    deep = await server.service.events.emit("locker_state_changed", locker(metadata=nested(127)))  # data: 128
    session_id = await server.session(role="staff")
    resumed = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={first['seq']}&epoch={first['epoch']}")
    messages = [await resumed.recv() for _ in range(4)]
    assert [m.get("seq") for m in messages[2:3]] == [deep["seq"]]
    assert messages[3]["data"]["count"] == 1
    await resumed.close()


@pytest_twisted.ensureDeferred
async def test_a_call_to_a_procedure_with_a_lone_surrogate_gets_invalid_uri(server):
    session_id = await server.session()
    client = await server.connect("/wamp", subprotocols=["wamp.2.json"])
    await client.send('[1,"eform",{"roles":{"caller":{}},"authmethods":["ticket"]}]')
    assert json.loads(await client.recv_raw())[0] == 4
    await client.send(json.dumps([5, session_id, {}]))
    assert json.loads(await client.recv_raw())[0] == 2
    await client.send('[48,7,{},"eform.\\ud800x",[]]')
    error = json.loads(await client.recv_raw())
    assert error[:5] == [8, 48, 7, {}, "wamp.error.invalid_uri"]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_data_of_exactly_max_data_bytes_is_accepted_and_stored(start_server):
    server = await start_server({"events.max_data_bytes": 1024})
    data = locker(reason="x")
    data["reason"] = "x" * (1024 - len(wire.dumps(data)) + 1)
    assert len(wire.dumps(data)) == 1024
    stored = await server.service.events.emit("locker_state_changed", data)
    assert stored["data"] == data
    assert await stored_count(server) == 1


@pytest_twisted.ensureDeferred
async def test_wamp_broadcast_of_an_integer_beyond_a_double_is_refused_invalid_argument(server):
    peer = await wamp_join(server, role="admin")
    error = await call_error(peer.call("eform.broadcast", LOCKERS, "tick", {"x": 10 ** 400}))
    assert error.error == "wamp.error.invalid_argument"
    assert error.args[0] == "data.x must be a finite number (this integer is beyond a double)"
    peer.leave()
