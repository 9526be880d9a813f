"""Replay on connect, resume (message and `?since=`), and the health endpoint, on the wire
(PROTOCOL.md sections 3, 4 `resume`, 6 "Persistence and replay", 7 `/api/websocket/health`):
a real server with its SQLite file, real `websockets` clients, raw text frames compared."""

from __future__ import annotations

import gc
import json
import time

import pytest
import pytest_twisted
import treq
from conftest import locker, parse_ts, until_pong
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

LOCKERS, HELP, EVENTS = "/ws/lockers", "/ws/help", "/ws/events"
CREATED_AT = "2024-01-15T10:30:00.000Z"
STRUCTURED_KEYS = ["id", "seq", "epoch", "type", "timestamp", "namespace", "room", "version", "data"]

SAMPLES = {
    "locker_state_changed": {"lockerId": "kiosk-1:12", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"},
    "help_requested": {"id": 17, "kiosk_id": "kiosk-1", "category": "other", "status": "open", "created_at": CREATED_AT},
    "help_status_updated": {"id": 17, "old_status": "open", "new_status": "assigned"},
    "command_applied": {
        "command": {"id": "cmd-9", "type": "open", "issued_by": "staff-3", "issued_at": CREATED_AT, "kioskId": "kiosk-1"},
        "result": {"success": True, "timestamp": CREATED_AT},
    },
    "system_status": {"component": "kiosk", "status": "online", "health_score": 99},
}
ON_HELP = {"help_requested", "help_status_updated"}


# -- harness -----------------------------------------------------------------------------


@pytest.fixture
def start(start_server, tmp_path):
    """`await start({...})`: a server whose events and sessions share one SQLite file in
    tmp_path (stated here, not left to the default `eformws.db` in the working directory)."""

    def start_with(overrides: dict | None = None):
        return start_server({"events.path": str(tmp_path / "eformws.db"), **(overrides or {})})

    return start_with


def emit(server, event_type="locker_state_changed", n=0):
    """Emit one valid event of `event_type` (varied by `n`); fires with the stored envelope."""
    data = json.loads(json.dumps(SAMPLES[event_type]))
    if event_type == "locker_state_changed":
        data["lockerId"] = f"kiosk-1:{n}"
    return server.service.events.emit(event_type, data)


async def emit_many(server, types, count):
    """`count` events cycling through `types`, one after another; the stored envelopes."""
    return [await emit(server, types[n % len(types)], n) for n in range(count)]


async def connect_raw(server, path, session_id, query=""):
    """A client that has read nothing yet."""
    return await server.connect(f"{path}?sessionId={session_id}{query}")


async def read_raw(client, count) -> list[str]:
    return [await client.recv_raw() for _ in range(count)]


async def until_resumed(client) -> tuple[list[dict], dict]:
    """Messages up to `resumed`, and the `resumed` message."""
    got = []
    while True:
        message = await client.recv()
        if message.get("type") == "resumed":
            return got, message
        got.append(message)


def frames(stored) -> list[str]:
    """Envelopes as the compact JSON text frames the server sends."""
    return [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in stored]


def seqs(envelopes) -> list[int]:
    return [int(e["seq"]) for e in envelopes]


def resumed_data(recovered: bool, count: int, newest: dict) -> dict:
    """`resumed`'s data when the log's newest event is `newest`."""
    return {"recovered": recovered, "count": count, "seq": newest["seq"], "epoch": newest["epoch"]}


async def live_client_with_last_seq(server, session_id, path=LOCKERS):
    """On an empty store: a client that saw two events live; (client, the last seq it saw)."""
    client = await server.join(path, session_id)
    stored = [await emit(server), await emit(server)]
    seen = [await client.recv(), await client.recv()]
    assert [m["id"] for m in seen] == [e["id"] for e in stored]
    return client, seen[-1]["seq"]


# -- replay on connect ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_replay_comes_after_connection_and_room_joined_oldest_first(start):
    server = await start()
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 3)
    client = await connect_raw(server, LOCKERS, session_id)
    got = [json.loads(raw) for raw in await read_raw(client, 5)]
    assert [m["type"] for m in got[:2]] == ["connection", "room_joined"]
    assert [m["id"] for m in got[2:]] == [e["id"] for e in stored]
    assert seqs(got[2:]) == sorted(seqs(got[2:]))
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_replayed_frames_are_byte_identical_to_the_live_frames(start):
    server = await start()
    session_id = await server.session()
    live = await server.join(EVENTS, session_id)
    for n, event_type in enumerate(SAMPLES):
        await emit(server, event_type, n)
    await emit(server, "locker_state_changed", 99)
    # non-ASCII text, floats, null and booleans in a frame
    await server.service.events.emit_locker_state_changed(
        "kiosk-1:7", "open", "error", "kiosk-1", reason="Kapı sıkıştı ✓", metadata={"temp": 21.5, "n": [1, None, True]}
    )
    live_frames = await until_pong(live, raw=True)
    assert len(live_frames) == len(SAMPLES) + 2
    newcomer = await server.join(EVENTS, session_id)
    assert await read_raw(newcomer, len(live_frames)) == live_frames
    assert await until_pong(newcomer, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_help_replay_has_no_locker_events(start):
    server = await start()
    session_id = await server.session()
    stored = [await emit(server, event_type) for event_type in SAMPLES]
    client = await server.join(HELP, session_id)
    expected = [e for e in stored if e["type"] in ON_HELP]
    assert await read_raw(client, len(expected)) == frames(expected)
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_events_namespace_replay_has_every_event_type(start):
    server = await start()
    session_id = await server.session()
    stored = [await emit(server, event_type) for event_type in SAMPLES]
    client = await server.join(EVENTS, session_id)
    got = await read_raw(client, len(stored))
    assert got == frames(stored)
    assert {json.loads(raw)["type"] for raw in got} == set(SAMPLES)
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_replay_is_the_newest_replay_limit_events(start):
    server = await start({"events.replay_limit": 5})
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 8)
    client = await server.join(LOCKERS, session_id)
    assert await read_raw(client, 5) == frames(stored[-5:])
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_default_replay_is_at_most_fifty_events(start):
    server = await start()
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 60)
    client = await server.join(LOCKERS, session_id)
    assert await read_raw(client, 50) == frames(stored[-50:])
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_replay_leaves_out_events_older_than_the_replay_window(start):
    server = await start({"events.replay_window": 1.0})
    session_id = await server.session()
    await emit_many(server, ["locker_state_changed"], 3)
    # Wall-clock time has to pass for a time-window behaviour: this Deferred fires once
    # the window is over (deferLater is used only for that, never to wait for a message).
    await task.deferLater(reactor, 1.1, lambda: None)
    newer = await emit_many(server, ["locker_state_changed"], 2)
    client = await server.join(LOCKERS, session_id)
    assert await read_raw(client, 2) == frames(newer)
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_replay_is_off_with_a_replay_limit_of_zero(start):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    await emit_many(server, ["locker_state_changed"], 3)
    client = await server.join(LOCKERS, session_id)
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_replay_never_contains_connection_bookkeeping_or_a_session_id(start):
    server = await start()
    earlier_session = await server.session("carol", "staff")
    admin_session = await server.session("alice", "admin")
    newcomer_session = await server.session("dave", "staff")
    earlier = await server.join(EVENTS, earlier_session)
    await server.join(EVENTS, earlier_session)  # more bookkeeping that must not be replayed
    await earlier.send({"type": "join_room", "room": "kiosk-1"})
    await earlier.close()
    # an event that came in over HTTP with the admin's session as its credential
    response = await treq.post(
        server.http("/api/websocket/events"),
        json={"type": "system_status", "data": SAMPLES["system_status"]},
        headers={"Authorization": f"Bearer {admin_session}"},
        persistent=False,
    )
    assert response.code == 201, await treq.content(response)
    stored = [await emit(server, event_type) for event_type in SAMPLES]
    await server.service.events.broadcast(EVENTS, "notice", {"text": "not a stored event"})
    client = await server.connect(EVENTS, additional_headers={"Cookie": f"sessionId={newcomer_session}"})
    everything = await read_raw(client, 2 + 1 + len(stored))
    everything += await until_pong(client, raw=True)
    assert [json.loads(raw)["type"] for raw in everything[:2]] == ["connection", "room_joined"]
    replay = [json.loads(raw) for raw in everything[2:]]
    assert [m["type"] for m in replay] == ["system_status", *SAMPLES]
    assert all(list(m) == STRUCTURED_KEYS for m in replay)
    for session_id in (earlier_session, admin_session, newcomer_session):
        assert not any(session_id in raw for raw in everything)


# -- resume by message -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resume_message_sends_exactly_the_missed_events_then_resumed(start):
    # No replay on connect here: the replay is its own behaviour (above), and a
    # reconnecting client that wants no overlap uses ?since= (below).
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id)
    await client.close()
    # 300 events the lockers client would have received, between 100 it would not have
    emitted = await emit_many(server, ["locker_state_changed", "locker_state_changed", "locker_state_changed", "system_status"], 400)
    missed = [e for e in emitted if e["type"] == "locker_state_changed"]
    assert len(missed) == 300
    client = await server.join(LOCKERS, session_id)
    await client.send({"type": "resume", "data": {"since": last_seen}})
    got, resumed = await until_resumed(client)
    assert len(got) == 300
    assert seqs(got) == seqs(missed)
    assert [m["id"] for m in got] == [e["id"] for e in missed]
    assert resumed["data"] == resumed_data(True, 300, emitted[-1])
    assert list(resumed) == ["type", "data", "timestamp"]
    assert await until_pong(client, raw=True) == []


@pytest_twisted.ensureDeferred
async def test_resumed_frames_are_byte_identical_to_the_live_frames(start):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id, EVENTS)
    witness = await server.join(EVENTS, session_id)
    await client.close()
    for n, event_type in enumerate(SAMPLES):
        await emit(server, event_type, n)
    live_frames = await until_pong(witness, raw=True)
    client = await server.join(EVENTS, session_id)
    await client.send({"type": "resume", "data": {"since": last_seen}})
    assert await read_raw(client, len(live_frames)) == live_frames
    assert json.loads(await client.recv_raw())["type"] == "resumed"


# -- resume by URL ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_since_on_the_url_takes_the_place_of_the_replay(start):
    server = await start()
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id)
    await client.close()
    missed = await emit_many(server, ["locker_state_changed"], 10)
    client = await connect_raw(server, LOCKERS, session_id, f"&since={last_seen}")
    raw = await read_raw(client, 2 + 10 + 1)
    got = [json.loads(frame) for frame in raw]
    assert [m["type"] for m in got[:2]] == ["connection", "room_joined"]
    assert raw[2:12] == frames(missed)
    assert got[12]["type"] == "resumed"
    assert got[12]["data"] == resumed_data(True, 10, missed[-1])
    assert await until_pong(client, raw=True) == []


# -- events emitted while a resume is in progress ----------------------------------------


def start_emits_when_the_store_is_asked_since(server, before: int, after: int) -> list:
    """Make the next `since` query (the resume's) start `before` emits just before it
    runs and `after` emits just after: events emitted while the resume is in progress.
    Returns the list that receives the emits' Deferreds."""
    store = server.service.event_store
    real_since = store.since
    pending: list = []

    def since(*args, **kwargs):
        del store.since  # once
        pending.extend(emit(server, n=n) for n in range(before))
        d = real_since(*args, **kwargs)
        pending.extend(emit(server, n=n) for n in range(after))
        return d

    store.since = since
    return pending


async def all_events_once(client, pending):
    """Everything up to `resumed`, then (once every pending emit is delivered) the rest."""
    got, resumed = await until_resumed(client)
    emitted = await defer.gatherResults(pending)
    rest = [json.loads(raw) for raw in await until_pong(client, raw=True)]
    return got + rest, resumed, emitted


@pytest_twisted.ensureDeferred
async def test_events_emitted_while_a_resume_message_is_in_progress_are_sent_once_in_order(start):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id)
    await client.close()
    missed = await emit_many(server, ["locker_state_changed"], 20)
    client = await server.join(LOCKERS, session_id)
    pending = start_emits_when_the_store_is_asked_since(server, before=100, after=100)
    await client.send({"type": "resume", "data": {"since": last_seen}})
    got, resumed, emitted = await all_events_once(client, pending)
    assert len(emitted) == 200
    assert seqs(got) == seqs(missed + emitted)
    assert resumed["data"]["recovered"] is True


@pytest_twisted.ensureDeferred
async def test_events_emitted_while_reconnecting_with_since_are_sent_once_in_order(start):
    server = await start()
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id)
    await client.close()
    missed = await emit_many(server, ["locker_state_changed"], 20)
    pending = start_emits_when_the_store_is_asked_since(server, before=100, after=100)
    pending += [emit(server, n=n) for n in range(100)]  # started, not awaited, before connecting
    client = await connect_raw(server, LOCKERS, session_id, f"&since={last_seen}")
    assert [json.loads(raw)["type"] for raw in await read_raw(client, 2)] == ["connection", "room_joined"]
    got, resumed, emitted = await all_events_once(client, pending)
    assert len(emitted) == 300
    assert seqs(got) == seqs(missed + emitted)
    assert resumed["data"]["recovered"] is True


@pytest_twisted.ensureDeferred
async def test_a_second_resume_while_one_is_running_is_answered_busy(start):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    client, last_seen = await live_client_with_last_seq(server, session_id)
    store = server.service.event_store
    real_since = store.since
    answer = defer.Deferred()
    asked = defer.Deferred()

    def since(*args):
        del store.since
        asked.callback(args)
        return answer  # the first resume stays in progress until the test answers

    store.since = since
    await client.send({"type": "resume", "data": {"since": last_seen}})
    args = await asked
    await client.send({"type": "resume", "data": {"since": last_seen}})
    error = await client.recv()
    assert (error["type"], error["data"]["code"]) == ("error", "busy")
    answer.callback(await real_since(*args))
    got, resumed = await until_resumed(client)
    assert (got, resumed["data"]["recovered"], resumed["data"]["count"]) == ([], True, 0)


# -- across a restart --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resume_after_a_server_restart_loses_and_duplicates_nothing(start):
    first = await start()
    session_id = await first.session()
    client, last_seen = await live_client_with_last_seq(first, session_id)
    await client.close()
    before_restart = await emit_many(first, ["locker_state_changed", "system_status"], 20)
    await first.service.stopService()
    second = await start()  # the same SQLite file: events and sessions survive
    after_restart = await emit_many(second, ["locker_state_changed", "system_status"], 20)
    assert min(seqs(after_restart)) > max(seqs(before_restart))
    client = await connect_raw(second, LOCKERS, session_id, f"&since={last_seen}")
    assert [json.loads(raw)["type"] for raw in await read_raw(client, 2)] == ["connection", "room_joined"]
    got, resumed = await until_resumed(client)
    expected = [e for e in before_restart + after_restart if e["type"] == "locker_state_changed"]
    assert seqs(got) == seqs(expected)
    assert [m["id"] for m in got] == [e["id"] for e in expected]
    assert resumed["data"] == resumed_data(True, 20, after_restart[-1])
    assert await until_pong(client, raw=True) == []


# -- recovered false and errors ----------------------------------------------------------


async def resume_reply(client, since):
    await client.send({"type": "resume", "data": {"since": since}})
    return await until_resumed(client)


@pytest_twisted.ensureDeferred
async def test_resume_from_before_the_stored_history_is_not_recovered(start):
    server = await start({"events.max_events": 10, "events.replay_limit": 0})
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 15)
    await server.service.event_store.expire()  # what the periodic sweep does: applies the cap
    client = await server.join(LOCKERS, session_id)
    got, resumed = await resume_reply(client, "1")
    assert stored[0]["seq"] == "1"
    assert got == []
    assert resumed["data"] == resumed_data(False, 0, stored[-1])


@pytest.mark.parametrize("since", ["999999", "not-a-seq", "", "-3", "1e3"])
@pytest_twisted.ensureDeferred
async def test_resume_from_an_unknown_seq_is_not_recovered(start, since):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 3)
    client = await server.join(LOCKERS, session_id)
    got, resumed = await resume_reply(client, since)
    assert got == []
    assert resumed["data"] == resumed_data(False, 0, stored[-1])


@pytest_twisted.ensureDeferred
async def test_since_on_the_url_from_an_unknown_seq_is_not_recovered_and_gets_the_replay_instead(start):
    server = await start({"events.replay_limit": 2})
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed"], 3)
    client = await connect_raw(server, LOCKERS, session_id, "&since=nonsense")
    got = [json.loads(raw) for raw in await read_raw(client, 5)]
    assert [m["type"] for m in got] == ["connection", "room_joined", *["locker_state_changed"] * 2, "resumed"]
    assert seqs(got[2:4]) == seqs(stored[1:])
    assert got[4]["data"] == resumed_data(False, 2, stored[-1])
    assert await until_pong(client, raw=True) == []


@pytest.mark.parametrize(
    "message",
    [
        {"type": "resume"},
        {"type": "resume", "data": {}},
        {"type": "resume", "data": {"since": None}},
        {"type": "resume", "data": {"since": True}},
        {"type": "resume", "data": {"since": ["1"]}},
    ],
)
@pytest_twisted.ensureDeferred
async def test_resume_without_a_since_is_an_invalid_message(start, message):
    server = await start({"events.replay_limit": 0})
    session_id = await server.session()
    await emit(server)
    client = await server.join(LOCKERS, session_id)
    await client.send(message)
    reply = await client.recv()
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "invalid_message"
    assert await until_pong(client, raw=True) == []  # no events, no resumed, and still open


# -- GET /api/websocket/health -------------------------------------------------------------


async def get_health(server, headers=None, query=""):
    response = await treq.get(server.http("/api/websocket/health" + query), headers=headers or {}, persistent=False)
    return response.code, await treq.content(response)


def credential(place, session_id) -> dict:
    """A session id carried as a bearer token, in a cookie or in the query string."""
    if place == "bearer":
        return {"headers": {"Authorization": f"Bearer {session_id}"}}
    if place == "cookie":
        return {"headers": {"Cookie": f"other=1; sessionId={session_id}"}}
    return {"query": f"?sessionId={session_id}"}


@pytest_twisted.ensureDeferred
async def test_health_without_a_session_is_401(start):
    server = await start()
    code, _ = await get_health(server)
    assert code == 401


@pytest.mark.parametrize("place", ["bearer", "cookie", "query"])
@pytest_twisted.ensureDeferred
async def test_health_with_an_unknown_session_is_401(start, place):
    server = await start()
    code, body = await get_health(server, **credential(place, "f" * 32))
    assert code == 401
    assert b"f" * 32 not in body


@pytest.mark.parametrize("place", ["bearer", "cookie", "query"])
@pytest_twisted.ensureDeferred
async def test_health_with_a_session_is_200_and_never_contains_the_session_id(start, place):
    server = await start()
    session_id = await server.session("kim", "kiosk", kiosk="kiosk-1")
    await server.join(LOCKERS, await server.session())
    await emit(server)
    code, body = await get_health(server, **credential(place, session_id))
    assert code == 200
    assert json.loads(body)["websocket_available"] is True
    assert session_id.encode() not in body


@pytest_twisted.ensureDeferred
async def test_health_reports_connection_health_and_event_statistics(start):
    server = await start()
    session_id = await server.session()
    await server.join(LOCKERS, session_id)
    await server.join(LOCKERS, session_id)
    await server.join(HELP, session_id)
    stored = [await emit(server, event_type) for event_type in SAMPLES]
    code, body = await get_health(server, **credential("bearer", session_id))
    assert code == 200
    health = json.loads(body)
    assert list(health) == ["websocket_available", "connection_health", "event_statistics", "events", "timestamp"]
    connections = health["connection_health"]
    assert connections["total_connections"] == 3
    assert connections["namespaces"] == {LOCKERS: 2, HELP: 1, EVENTS: 0}
    assert set(connections["latency_metrics"]) >= {"median", "p95", "p99", "connection_count"}
    assert connections["latency_metrics"]["connection_count"] == 3
    statistics = health["event_statistics"]
    assert statistics["total_events"] == 5
    assert statistics["events_by_namespace"] == {LOCKERS: 1, HELP: 2, EVENTS: 2}
    assert statistics["events_by_type"] == {event_type: 1 for event_type in SAMPLES}
    assert statistics["oldest_event"] <= statistics["newest_event"]
    assert abs(parse_ts(statistics["oldest_event"]) - parse_ts(stored[0]["timestamp"])) < 1
    assert abs(parse_ts(statistics["newest_event"]) - parse_ts(stored[-1]["timestamp"])) < 1
    assert [e["id"] for e in health["events"]] == [e["id"] for e in stored]


@pytest_twisted.ensureDeferred
async def test_health_events_are_the_newest_twenty_oldest_first(start):
    server = await start()
    session_id = await server.session()
    stored = await emit_many(server, ["locker_state_changed", "help_requested", "system_status"], 25)
    code, body = await get_health(server, **credential("query", session_id))
    assert code == 200
    assert json.loads(body)["events"] == stored[-20:]


@pytest_twisted.ensureDeferred
async def test_health_events_leave_out_events_older_than_thirty_seconds(start, monkeypatch):
    server = await start()
    session_id = await server.session()
    store = server.service.event_store
    # The store's clock is its injection point for the time an event was stored: this one
    # was stored 31 s ago, without the test waiting 31 s.
    monkeypatch.setattr(store, "_clock", lambda: time.time() - 31)
    await emit(server)
    monkeypatch.undo()
    fresh = await emit(server)
    code, body = await get_health(server, **credential("cookie", session_id))
    assert code == 200
    health = json.loads(body)
    assert health["events"] == [fresh]
    assert health["event_statistics"]["total_events"] == 2


# -- a client that leaves while its replay is read -------------------------------------------


@pytest.mark.parametrize("query,method", [("", "recent"), ("&since=1", "since")], ids=["replay", "resume"])
@pytest_twisted.ensureDeferred
async def test_a_replay_or_resume_that_finishes_after_the_client_left_logs_no_error(start, query, method):
    server = await start()
    session_id = await server.session()
    await emit_many(server, ["locker_state_changed"], 3)
    store = server.service.event_store
    real_query = getattr(store, method)
    answer, asked = defer.Deferred(), defer.Deferred()

    def query_held_open(*args):
        delattr(store, method)
        asked.callback(args)
        return answer  # the replay or resume stays in progress until the test answers

    setattr(store, method, query_held_open)
    client = await connect_raw(server, LOCKERS, session_id, query)
    connection_id = json.loads(await client.recv_raw())["data"]["connectionId"]
    args = await asked
    gone = server.hub.namespaces[LOCKERS].connections[connection_id].closed
    await client.close()
    await gone
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        answer.callback(await real_query(*args))
        gc.collect()  # an unhandled error left in a Deferred is logged when it is collected
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [(e.get("log_format"), e["log_failure"].getErrorMessage()) for e in failures] == []


# -- many connections at once ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_burst_of_connects_asks_the_store_for_the_replay_once(start):
    server = await start()
    session_id = await server.session()
    stored = [await emit(server, n=n) for n in range(3)]
    store = server.service.event_store
    asked = []
    original = store.recent
    store.recent = lambda *args, **kwargs: asked.append(args) or original(*args, **kwargs)
    clients = [await server.join(LOCKERS, session_id) for _ in range(10)]
    for client in clients:
        assert [m["seq"] for m in [await client.recv() for _ in stored]] == [e["seq"] for e in stored]
    assert len(asked) == 1


@pytest_twisted.ensureDeferred
async def test_an_event_delivered_after_a_shared_replay_is_in_the_next_connections_replay(start):
    server = await start()
    session_id = await server.session()
    first = await emit(server, n=1)
    early = await server.join(LOCKERS, session_id)
    assert (await early.recv())["seq"] == first["seq"]
    second = await emit(server, n=2)
    late = await server.join(LOCKERS, session_id)
    assert [(await late.recv())["seq"] for _ in range(2)] == [first["seq"], second["seq"]]


@pytest_twisted.ensureDeferred
async def test_a_client_connecting_just_after_a_failed_replay_query_still_gets_live_events(server):
    session_id = await server.session()
    store = server.service.event_store
    original = store.recent
    failures = [RuntimeError("event store unavailable")]
    store.recent = lambda *args, **kwargs: (defer.fail(failures.pop()) if failures
                                            else original(*args, **kwargs))
    first = await server.join(LOCKERS, session_id)  # its replay fails: left out
    second = await server.join(LOCKERS, session_id)  # same filter and position, within a second
    stored = await server.service.events.emit("locker_state_changed", locker())
    assert await until_pong(first) == [stored]
    assert await until_pong(second) == [stored]
