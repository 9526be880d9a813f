"""The event log's guarantees on one process, as a client sees them: where live delivery
starts, the hand-off between a resume and live delivery by position, epochs, appends that
callers give up on, and idempotency keys over HTTP (over WAMP: test_wamp.py)."""

from __future__ import annotations

import json

import pytest_twisted
import treq
from conftest import locker
from twisted.internet import defer

LOCKERS, EVENTS = "/ws/lockers", "/ws/events"
TOKEN = "log-test-token"


def emit(server, n: int = 0, key: str | None = None):
    return server.service.events.emit("locker_state_changed", locker(n), key)


async def post_event(server, body: dict, key: str | list[str] | None = None):
    """POST /api/websocket/events with the API token; (status, headers, JSON body)."""
    headers = {b"Content-Type": [b"application/json"], b"Authorization": [f"Bearer {TOKEN}".encode()]}
    if key is not None:
        headers[b"Idempotency-Key"] = [k.encode() for k in ([key] if isinstance(key, str) else key)]
    response = await treq.post(server.http("/api/websocket/events"), data=json.dumps(body).encode(),
                               headers=headers, persistent=False)
    return response.code, response.headers, await treq.json_content(response)


async def messages_until(client, kind: str) -> list[dict]:
    """Every message up to and including the first of type `kind`."""
    got = [await client.recv()]
    while got[-1]["type"] != kind:
        got.append(await client.recv())
    return got


async def settled(client) -> list[dict]:
    """What `client` gets before the answer to a ping sent now (nothing is held then)."""
    await client.send({"type": "ping", "data": {"timestamp": "settled"}})
    got = await messages_until(client, "pong")
    return got[:-1]


class HeldDeliveries:
    """Stands between the memory store and the feed: what the log delivers waits here until
    `release()`, as it does while a process reads the log behind the writers."""

    def __init__(self, store):
        self.store = store
        self.deliver = store._on_event
        self.pending: list = []
        store._on_event = lambda envelope, created: self.pending.append((envelope, created))

    def release(self) -> None:
        self.store._on_event = self.deliver
        pending, self.pending = self.pending, []
        for envelope, created in pending:
            self.deliver(envelope, created)


# -- where live delivery starts -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_says_the_epoch_and_the_seq_live_delivery_starts_after(start_server):
    server = await start_server({"events.replay_limit": 0})
    stored = [await emit(server, n) for n in range(3)]
    client = await server.connect(f"{LOCKERS}?sessionId={await server.session()}")
    connection = (await client.recv())["data"]
    assert (connection["epoch"], connection["seq"]) == (stored[-1]["epoch"], stored[-1]["seq"])
    assert (await client.recv())["type"] == "room_joined"
    after = await emit(server, 9)
    assert (await client.recv())["seq"] == after["seq"] == str(int(connection["seq"]) + 1)


@pytest_twisted.ensureDeferred
async def test_connection_with_since_carries_the_epoch_and_no_seq(start_server):
    server = await start_server()
    stored = await emit(server)
    client = await server.connect(f"{LOCKERS}?sessionId={await server.session()}&since={stored['seq']}")
    connection = (await client.recv())["data"]
    assert connection["epoch"] == stored["epoch"] and "seq" not in connection


@pytest_twisted.ensureDeferred
async def test_replay_false_on_the_url_leaves_out_the_replay(start_server):
    server = await start_server()
    await emit(server)
    client = await server.connect(f"{LOCKERS}?sessionId={await server.session()}&replay=false")
    assert [(await client.recv())["type"] for _ in range(2)] == ["connection", "room_joined"]
    assert await settled(client) == []


# -- the hand-off between a resume and live delivery ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_stored_before_a_resume_but_delivered_after_it_come_once_live(start_server):
    server = await start_server({"events.store": "memory", "events.replay_limit": 0})
    session_id = await server.session()
    first, second = await emit(server, 1), await emit(server, 2)
    held = HeldDeliveries(server.service.event_store)
    later = [await emit(server, n) for n in (3, 4)]  # in the log, not yet delivered by this process
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={first['seq']}&epoch={first['epoch']}")
    got = await messages_until(client, "resumed")
    assert [m.get("seq") for m in got[2:-1]] == [second["seq"]]  # the resume answers up to the position
    assert got[-1]["data"] == {"recovered": True, "count": 1, "seq": second["seq"], "epoch": second["epoch"]}
    held.release()
    assert [m["seq"] for m in await settled(client)] == [e["seq"] for e in later]


@pytest_twisted.ensureDeferred
async def test_a_client_resuming_past_this_process_gets_nothing_it_already_has(start_server):
    server = await start_server({"events.store": "memory", "events.replay_limit": 0})
    session_id = await server.session()
    first = await emit(server, 1)
    held = HeldDeliveries(server.service.event_store)
    ahead = [await emit(server, n) for n in (2, 3)]  # the client saw these on a process ahead of this one
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={ahead[-1]['seq']}&epoch={first['epoch']}")
    got = await messages_until(client, "resumed")
    assert got[-1]["data"] == {"recovered": True, "count": 0, "seq": ahead[-1]["seq"], "epoch": first["epoch"]}
    held.release()
    newer = await emit(server, 4)
    assert [m["seq"] for m in await settled(client)] == [newer["seq"]]


@pytest_twisted.ensureDeferred
async def test_live_events_held_during_a_resume_are_all_sent_after_it_in_seq_order(start_server):
    server = await start_server({"events.replay_limit": 0})
    session_id = await server.session()
    cursor = await emit(server, 0)
    missed = [await emit(server, n) for n in range(1, 6)]
    store = server.service.event_store
    real_since, answer, asked = store.since, defer.Deferred(), defer.Deferred()

    def since(*args):
        del store.since
        asked.callback(args)
        return answer  # the resume's query stays open until the test answers it

    store.since = since
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={cursor['seq']}")
    args = await asked
    during = [await emit(server, n) for n in range(10, 40)]  # delivered live, held meanwhile
    answer.callback(await real_since(*args))  # the log, asked now, already holds `during`
    got = await messages_until(client, "resumed")
    assert [m["seq"] for m in got[2:-1]] == [e["seq"] for e in missed + during]
    assert got[-1]["data"]["seq"] == during[-1]["seq"]


@pytest_twisted.ensureDeferred
async def test_a_resume_the_log_cannot_answer_closes_1013_and_claims_nothing_lost(start_server):
    server = await start_server({"events.replay_limit": 0})
    session_id = await server.session()
    cursor, missed = await emit(server, 0), await emit(server, 1)
    store = server.service.event_store
    real_since = store.since

    def failing(*args):
        del store.since  # once
        return defer.fail(ConnectionError("the log does not answer"))

    store.since = failing
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={cursor['seq']}&epoch={cursor['epoch']}")
    got = []
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            got.append((await client.recv())["type"])
    except ConnectionClosed:
        pass
    assert "resumed" not in got
    assert await client.closed() == (1013, "Event log unavailable")
    assert store.since == real_since
    again = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={cursor['seq']}&epoch={cursor['epoch']}")
    answered = await messages_until(again, "resumed")
    assert [m.get("id") for m in answered[2:-1]] == [missed["id"]] and answered[-1]["data"]["recovered"] is True


@pytest_twisted.ensureDeferred
async def test_since_on_a_namespace_without_a_default_room_is_answered_resumed(start_configured):
    server = await start_configured('[[namespaces]]\npath = "/ws/custom"\nrequire_auth = false\n')
    stored = await emit(server, 1)
    client = await server.connect(f"/ws/custom?since={stored['seq']}&epoch={stored['epoch']}")
    got = await messages_until(client, "resumed")
    assert [m["type"] for m in got] == ["connection", "resumed"]
    assert got[-1]["data"] == {"recovered": True, "count": 0, "seq": stored["seq"], "epoch": stored["epoch"]}


@pytest_twisted.ensureDeferred
async def test_live_events_held_during_a_resume_that_is_not_recovered_come_once_after_the_replay(start_server):
    server = await start_server({"events.replay_limit": 50})
    session_id = await server.session()
    before = [await emit(server, n) for n in range(3)]
    store = server.service.event_store
    real_since, answer, asked = store.since, defer.Deferred(), defer.Deferred()

    def since(*args):
        del store.since
        asked.callback(args)
        return answer

    store.since = since
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since=1&epoch=another-log")
    args = await asked
    during = [await emit(server, n) for n in range(10, 13)]  # held while the resume runs
    answer.callback(await real_since(*args))
    got = await messages_until(client, "resumed")
    got += await settled(client)
    assert [m["seq"] for m in got if "seq" in m] == [e["seq"] for e in before + during]


# -- epochs ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_resume_in_the_log_epoch_is_recovered(start_server):
    server = await start_server({"events.replay_limit": 0})
    cursor = await emit(server, 0)
    missed = await emit(server, 1)
    client = await server.join(LOCKERS, await server.session())
    await client.send({"type": "resume", "data": {"since": cursor["seq"], "epoch": cursor["epoch"]}})
    got = await messages_until(client, "resumed")
    assert [m["id"] for m in got[:-1]] == [missed["id"]]
    assert got[-1]["data"]["recovered"] is True


@pytest_twisted.ensureDeferred
async def test_a_resume_from_another_epoch_is_not_recovered_and_gets_what_the_log_holds(start_server):
    server = await start_server({"events.replay_limit": 2})
    stored = [await emit(server, n) for n in range(3)]
    client = await server.connect(f"{LOCKERS}?sessionId={await server.session()}&since=1&epoch=another-log")
    got = await messages_until(client, "resumed")
    assert [m["seq"] for m in got[2:-1]] == [e["seq"] for e in stored[1:]]  # the newest held, as a replay
    assert got[-1]["data"] == {"recovered": False, "count": 2, "seq": stored[-1]["seq"], "epoch": stored[-1]["epoch"]}


@pytest_twisted.ensureDeferred
async def test_a_new_sqlite_file_is_another_epoch_and_the_same_file_keeps_its_epoch(start_server, tmp_path):
    first = await start_server({"events.path": str(tmp_path / "a.db")})
    before = await emit(first)
    await first.service.stopService()
    again = await start_server({"events.path": str(tmp_path / "a.db")})
    assert (await emit(again))["epoch"] == before["epoch"]
    await again.service.stopService()
    other = await start_server({"events.path": str(tmp_path / "b.db")})
    assert (await emit(other))["epoch"] != before["epoch"]


# -- appends whose caller gives up ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_emit_whose_caller_gives_up_is_still_stored_and_delivered(start_server):
    server = await start_server({"events.replay_limit": 0})
    client = await server.join(LOCKERS, await server.session())
    d = emit(server, 7)
    d.addErrback(lambda failure: failure.trap(defer.CancelledError))
    d.cancel()
    delivered = await client.recv()
    assert delivered["data"]["lockerId"] == "kiosk-1:7"
    assert await settled(client) == []
    found = await server.service.event_store.since("0", None, _lockers_filter(), 10)
    assert [e["id"] for e in found.events] == [delivered["id"]]


def _lockers_filter():
    from eformws.events.store import EventFilter

    return EventFilter(LOCKERS, frozenset({"locker_updates"}))


# -- idempotency keys ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_repeated_idempotency_key_answers_the_first_event_and_stores_nothing_new(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "events.replay_limit": 0})
    client = await server.join(LOCKERS, await server.session())
    body = {"type": "locker_state_changed", "data": locker(1)}
    status, headers, first = await post_event(server, body, "order-17")
    assert status == 201 and not headers.hasHeader(b"Idempotent-Replayed")
    status, headers, repeat = await post_event(server, body, "order-17")
    assert status == 201 and headers.getRawHeaders(b"Idempotent-Replayed") == [b"true"]
    assert repeat == first
    assert [m["id"] for m in await settled(client)] == [first["id"]]


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_used_for_another_event_is_a_conflict_and_stores_nothing(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "events.replay_limit": 0})
    client = await server.join(LOCKERS, await server.session())
    status, _, first = await post_event(server, {"type": "locker_state_changed", "data": locker(1)}, "k-1")
    assert status == 201
    status, _, body = await post_event(server, {"type": "locker_state_changed", "data": locker(2)}, "k-1")
    assert (status, body["message"]) == (409, "Idempotency-Key was already used for a different event")
    assert [m["id"] for m in await settled(client)] == [first["id"]]


@pytest_twisted.ensureDeferred
async def test_the_same_event_without_a_key_or_with_another_key_is_stored_again(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    body = {"type": "locker_state_changed", "data": locker(1)}
    ids = {(await post_event(server, body, key))[2]["id"] for key in (None, None, "a", "b")}
    assert len(ids) == 4


@pytest_twisted.ensureDeferred
async def test_a_key_is_forgotten_after_the_idempotency_window(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "events.idempotency_window": 1.0})
    body = {"type": "locker_state_changed", "data": locker(1)}
    first = (await post_event(server, body, "short"))[2]
    await server.service.event_store.expire(now=_now() + 2)  # the sweep, after the window
    found = server.service.event_store._db.run(
        lambda c: c.execute("SELECT COUNT(*) FROM event_keys").fetchone()[0]
    )
    assert await found == 0
    status, headers, again = await post_event(server, body, "short")
    assert status == 201 and again["id"] != first["id"]


def _now() -> float:
    import time

    return time.time()


@pytest_twisted.ensureDeferred
async def test_a_malformed_idempotency_key_is_refused_before_anything_is_stored(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    body = {"type": "locker_state_changed", "data": locker(1)}
    for key in ("", "x" * 256, "with space", "naïve"):
        status, _, answer = await post_event(server, body, key)
        assert (status, answer["message"]) == (400, "Idempotency-Key must be 1 to 255 visible ASCII characters"), key
    status, _, answer = await post_event(server, body, ["one", "two"])
    assert (status, answer["message"]) == (400, "Idempotency-Key must be given once")
    assert (await server.service.event_store.stats())["total_events"] == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_with_one_key_store_one_event(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    body = {"type": "locker_state_changed", "data": locker(1)}
    answers = await defer.gatherResults([defer.ensureDeferred(post_event(server, body, "burst")) for _ in range(20)])
    assert {status for status, _, _ in answers} == {201}
    assert len({answer["id"] for _, _, answer in answers}) == 1
    assert (await server.service.event_store.stats())["total_events"] == 1
