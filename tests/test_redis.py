"""Several processes through a real Redis (PROTOCOL.md section 8): real `twistd -n eformws`
processes sharing the suite's redis-server (a prefix of their own each test), clients on
each; `--workers N`; and a Redis of the test's own that stops and comes back mid-stream."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid

import pytest
import pytest_twisted
import treq
from conftest import REDIS_CONNECTIONS, locker, within
from processes import (
    TIMEOUT,
    Gateway,
    RedisServer,
    create_session,
    eformws,
    write_config,
)
from twisted.internet import defer
from websockets.exceptions import ConnectionClosed

TOKEN = "redis-test-token"
LOCKERS, EVENTS = "/ws/lockers", "/ws/events"
READING = r"redis bus reading"


def redis_config(directory, url: str, prefix: str, text: str = ""):
    directory.mkdir(exist_ok=True)
    return write_config(
        directory,
        f'[auth]\napi_tokens = ["{TOKEN}"]\n'
        f"[redis]\nurl = {json.dumps(url)}\nprefix = {json.dumps(prefix)}\n"
        "reconnect_initial_delay = 0.05\nreconnect_max_delay = 0.5\n"
        "node_heartbeat = 0.2\nnode_ttl = 2.0\n" + text,
    )


async def start_gateway(spawn, directory, url, prefix, text=""):
    """A gateway process that reads the Redis bus (so it hears every later message)."""
    config = redis_config(directory, url, prefix, text)
    gateway = await spawn(["--config", str(config)], directory)
    await gateway.process.line(READING)
    gateway.config = config
    return gateway


async def gateways(spawn, tmp_path, url, prefix, count=2, text=""):
    return [await start_gateway(spawn, tmp_path / f"node{i}", url, prefix, text) for i in range(count)]


async def post(gateway, path, body):
    response = await treq.post(
        gateway.http(path), data=json.dumps(body).encode(), persistent=False,
        headers={b"Authorization": [f"Bearer {TOKEN}".encode()], b"Content-Type": [b"application/json"]},
    )
    return response.code, await treq.json_content(response)


async def get(gateway, path, session_id=None):
    headers = {b"Authorization": [f"Bearer {session_id}".encode()]} if session_id else {}
    response = await treq.get(gateway.http(path), headers=headers, persistent=False)
    return response.code, await treq.json_content(response)


async def emit(gateway, n: int) -> dict:
    status, body = await post(gateway, "/api/websocket/events", {"type": "locker_state_changed", "data": locker(n)})
    assert status == 201, body
    return body


async def broadcast(gateway, event, data, namespace=LOCKERS, room=None):
    body = {"namespace": namespace, "event": event, "data": data}
    if room is not None:
        body["room"] = room
    status, answer = await post(gateway, "/api/websocket/broadcast", body)
    assert status == 200, answer
    return answer


async def until_marker(client, producer, namespace=LOCKERS, room=None) -> list:
    """What `client` gets before a marker broadcast made on `producer` now: one producer's
    messages arrive in order everywhere, so anything sent before is in the list."""
    marker = f"marker-{uuid.uuid4().hex}"
    await broadcast(producer, marker, {}, namespace, room)
    got = []
    while True:
        message = await client.recv(timeout=TIMEOUT)
        if message["type"] == marker:
            return got
        if not is_marker(message):  # other clients' markers reach this one too
            got.append(message)


def seq_key(seq: str) -> int:
    return int(seq)


async def until_event_marker(client, producer) -> list:
    """What `client` (on /ws/events) gets before a marker event emitted on `producer` now:
    every process delivers events in seq order, so every event stored before it is in the
    list (broadcasts travel apart from events: a broadcast marker says nothing of them)."""
    marker = f"marker-{uuid.uuid4().hex}"
    data = {"component": "gateway", "status": "online", "health_score": 100, "message": marker}
    status, body = await post(producer, "/api/websocket/events", {"type": "system_status", "data": data})
    assert status == 201, body
    got = []
    while True:
        message = await client.recv(timeout=TIMEOUT)
        if isinstance(message.get("data"), dict) and message["data"].get("message") == marker:
            return got
        if not is_marker(message):
            got.append(message)


def is_marker(message: dict) -> bool:
    """A marker broadcast or marker event (of any client's waiting)."""
    data = message.get("data")
    text = data.get("message") if isinstance(data, dict) else None
    return message["type"].startswith("marker-") or (isinstance(text, str) and text.startswith("marker-"))


async def next_message(client) -> dict:
    """The next message that is not a marker."""
    while True:
        message = await client.recv(timeout=TIMEOUT)
        if not is_marker(message):
            return message


# -- delivery across processes -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_created_in_redis_by_the_cli_is_accepted_by_both_processes(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config, role="staff")
    for gateway in (a, b):
        client = await gateway.join(LOCKERS, session_id)
        await client.close()


@pytest_twisted.ensureDeferred
async def test_revoking_a_redis_session_with_the_cli_makes_every_process_refuse_it(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    out, err, code = await eformws("sessions", "revoke", session_id, "--config", str(a.config), cwd=tmp_path)
    assert (out, code) == ("revoked\n", 0), err
    for gateway in (a, b):
        client = await gateway.connect(f"{LOCKERS}?sessionId={session_id}")
        assert await client.closed() == (1008, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_broadcast_on_one_process_reaches_clients_on_both_exactly_once(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    clients = [await a.join(LOCKERS, session_id), await b.join(LOCKERS, session_id)]
    answer = await broadcast(a, "maintenance", {"minutes": 5})
    for client in clients:
        got = await until_marker(client, a)
        assert [(m["type"], m["data"]) for m in got] == [("maintenance", {"minutes": 5})]
    assert answer["delivered"] >= 1


@pytest_twisted.ensureDeferred
async def test_room_broadcast_reaches_only_room_members_on_every_process(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    members = [await a.join(LOCKERS, session_id), await b.join(LOCKERS, session_id)]
    outsiders = [await a.join(LOCKERS, session_id), await b.join(LOCKERS, session_id)]
    for member in members:
        await member.send({"type": "join_room", "data": {"room": "kiosk-7"}})
        assert (await member.recv())["type"] == "room_joined"
    await broadcast(b, "door", {"open": True}, room="kiosk-7")
    for member in members:
        got = await until_marker(member, b)
        assert [(m["type"], m["room"]) for m in got] == [("door", "kiosk-7")]
    for outsider in outsiders:
        assert await until_marker(outsider, b) == []


@pytest_twisted.ensureDeferred
async def test_events_of_one_producer_reach_the_other_process_once_each_in_emit_order(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    client = await b.join(EVENTS, session_id)
    emitted = [await emit(a, n) for n in range(30)]
    got = await until_event_marker(client, a)
    assert [m["seq"] for m in got] == [e["seq"] for e in emitted]
    assert [m["data"]["lockerId"] for m in got] == [f"kiosk-1:{n}" for n in range(30)]


@pytest_twisted.ensureDeferred
async def test_concurrent_emits_on_two_processes_each_reach_every_client_exactly_once(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    clients = [await a.join(EVENTS, session_id), await b.join(EVENTS, session_id)]
    stored = await defer.gatherResults(
        [defer.ensureDeferred(emit(gateway, n)) for n in range(20) for gateway in (a, b)]
    )
    for client in clients:
        got = await until_event_marker(client, a)
        got += await until_event_marker(client, b)
        assert sorted(m["seq"] for m in got) == sorted(e["seq"] for e in stored)


@pytest_twisted.ensureDeferred
async def test_seqs_are_shared_by_every_process_and_increase(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    seqs = [(await emit(gateway, n))["seq"] for n in range(6) for gateway in (a, b)]
    keys = [seq_key(seq) for seq in seqs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


@pytest_twisted.ensureDeferred
async def test_resume_on_the_other_process_sends_exactly_the_missed_events(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    client = await a.join(LOCKERS, session_id)
    seen = await emit(a, 0)
    assert (await client.recv())["seq"] == seen["seq"]
    await client.close()
    missed = [await emit(a, n) for n in range(1, 6)]
    again = await b.connect(f"{LOCKERS}?sessionId={session_id}&since={seen['seq']}")
    messages = [await again.recv() for _ in range(2 + len(missed) + 1)]
    assert [m["type"] for m in messages[:2]] == ["connection", "room_joined"]
    # What B had read of the log comes before `resumed`, the rest live after it: all, in order.
    assert [m["seq"] for m in messages[2:] if "seq" in m] == [e["seq"] for e in missed]
    [resumed] = [m for m in messages if m["type"] == "resumed"]
    assert resumed["data"]["recovered"] is True


@pytest_twisted.ensureDeferred
async def test_replay_on_connect_is_the_same_on_every_process(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    emitted = [await emit(a, n) for n in range(3)]
    for gateway in (a, b):
        client = await gateway.join(LOCKERS, session_id)
        replay = [await client.recv() for _ in emitted]
        assert [m["seq"] for m in replay] == [e["seq"] for e in emitted]
        await client.close()


@pytest_twisted.ensureDeferred
async def test_status_counts_connections_of_every_process_and_lists_each_node(tmp_path, spawn, redis_url, redis_prefix):
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    clients = [await a.join(LOCKERS, session_id), await b.join(LOCKERS, session_id), await b.join(EVENTS, session_id)]
    expected = {"/ws/lockers": 2, "/ws/events": 1, "/ws/help": 0}
    status = await wait_for_status(a, lambda s: s["namespaces"] == expected)
    assert status["total_connections"] == 3
    nodes = sorted(status["nodes"], key=lambda n: n["connections"])
    assert [n["connections"] for n in nodes] == [1, 2]
    assert all(set(n) >= {"id", "connections", "last_seen"} for n in nodes)
    assert len({n["id"] for n in nodes}) == 2
    for client in clients:
        await client.close()


async def wait_for_status(gateway, condition, attempts=100):
    """The status once `condition` holds: other nodes' entries change on their heartbeat
    (0.2 s here), so ask again after each heartbeat, up to `attempts` times."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    status = None
    for _ in range(attempts):
        code, status = await get(gateway, "/api/websocket/status")
        assert code == 200, status
        if condition(status):
            return status
        await deferLater(reactor, 0.2, lambda: None)
    raise AssertionError(f"status never matched: {status}")


# -- WAMP across processes ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_emit_on_one_process_reaches_a_wamp_subscriber_on_the_other(tmp_path, spawn, redis_url, redis_prefix):
    from conftest import within
    from wamp_peer import open_peer, subscribe

    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    peer = open_peer(a, "msgpack", ticket=await create_session(tmp_path, a.config))
    await within(peer.joined)
    inbox, _ = await subscribe(peer, "eform.lockers.locker_updates")
    stored = await emit(b, 1)
    envelope, details = await inbox.next()
    assert envelope == stored
    assert details.topic == "eform.lockers.locker_updates"
    peer.leave()
    await within(peer.gone)


@pytest_twisted.ensureDeferred
async def test_admin_wamp_publish_on_one_process_reaches_legacy_clients_on_the_other(tmp_path, spawn, redis_url, redis_prefix):
    from autobahn.wamp.types import PublishOptions
    from conftest import within
    from wamp_peer import open_peer

    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, a.config)
    legacy = await b.join(LOCKERS, session_id)
    peer = open_peer(a, "json", ticket=session_id)
    await within(peer.joined)
    await within(peer.publish("eform.lockers", "notice", {"minutes": 5}, options=PublishOptions(acknowledge=True)))
    got = await until_marker(legacy, a)
    assert [(m["type"], m["data"]) for m in got] == [("notice", {"minutes": 5})]
    peer.leave()
    await within(peer.gone)


async def wamp_peers(a, b, tmp_path, serializer: str):
    """A joined stock Autobahn peer on each of two gateways (`serializer`): (on_a, on_b)."""
    from conftest import within
    from wamp_peer import open_peer

    peers = [open_peer(gateway, serializer, ticket=await create_session(tmp_path, a.config)) for gateway in (a, b)]
    for peer in peers:
        await within(peer.joined)
    return peers


async def leave_all(*peers) -> None:
    from conftest import within

    for peer in peers:
        peer.leave()
        await within(peer.gone)


@pytest_twisted.ensureDeferred
async def test_an_applications_publication_on_one_process_reaches_its_subscriber_on_the_other(
        tmp_path, spawn, redis_url, redis_prefix):
    from autobahn.wamp.types import PublishOptions
    from conftest import within
    from wamp_peer import subscribe

    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    # (Autobahn's MessagePack decoder, the router's too, refuses map keys that are not strings: both speak CBOR)
    publisher, subscriber = await wamp_peers(a, b, tmp_path, "cbor")
    inbox, _ = await subscribe(subscriber, "app.orders.created")
    await within(publisher.publish("app.orders.created", 7, b"\x00\xffraw", {1: "one"}, total=12,
                                   note={"\u0000bytes": "not bytes"}, options=PublishOptions(acknowledge=True)))
    args, kwargs, details = await inbox.next_publication()
    # byte strings and keys that are not strings arrive as sent (JSON on the bus could hold neither)
    assert (args, kwargs, details.publisher) == ((7, b"\x00\xffraw", {1: "one"}),
                                                 {"total": 12, "note": {"\u0000bytes": "not bytes"}}, publisher.session_id)
    await leave_all(subscriber, publisher)


@pytest_twisted.ensureDeferred
async def test_an_event_retained_on_one_process_is_given_to_a_new_subscriber_on_the_other(
        tmp_path, spawn, redis_url, redis_prefix):
    from autobahn.wamp.types import PublishOptions
    from conftest import within
    from wamp_peer import subscribe

    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    publisher, subscriber = await wamp_peers(a, b, tmp_path, "json")
    marker, _ = await subscribe(subscriber, "app.marker")
    await within(publisher.publish("app.display", "kept", options=PublishOptions(acknowledge=True, retain=True)))
    await within(publisher.publish("app.marker", options=PublishOptions(acknowledge=True)))
    await marker.next_publication()  # B has read the bus past the retained event (one publisher, in order)
    inbox, _ = await subscribe(subscriber, "app.display", get_retained=True)
    args, _, details = await inbox.next_publication()
    assert (args, details.retained) == (("kept",), True)
    await leave_all(subscriber, publisher)


# -- workers ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_more_than_one_worker_without_redis_stops_with_one_line(tmp_path, spawn):
    config = write_config(tmp_path)
    process = spawn.raw(["--config", str(config), "--workers", "2"], tmp_path)
    code, _ = await process.ended()
    assert code == 1
    lines = process.err.decode().strip().splitlines()
    assert lines == ["eformws: configuration error: server.workers: more than 1 worker needs redis.url "
                     "(workers deliver to each other through Redis)"]


@pytest.mark.slow  # ~4 s: worker processes killed and restarted
@pytest_twisted.ensureDeferred
async def test_workers_share_one_port_and_a_killed_worker_is_restarted(tmp_path, spawn, redis_url, redis_prefix):
    config = redis_config(tmp_path, redis_url, redis_prefix)
    parent = spawn.raw(["--config", str(config), "--workers", "2"], tmp_path)
    port = int((await parent.line(r"eformws listening on 127\.0\.0\.1:(\d+) with 2 workers")).group(1))
    gateway = Gateway(parent, port)
    await wait_for_status(gateway, lambda s: len(s.get("nodes", ())) == 2)
    session_id = await create_session(tmp_path, config)
    clients = []
    while True:  # the kernel hands each connection to one worker: get some on both
        clients.append(await gateway.join(LOCKERS, session_id))
        status = await wait_for_status(gateway, lambda s: s["total_connections"] == len(clients))
        if all(node["connections"] for node in status["nodes"]) or len(clients) >= 40:
            break
    counts = {worker_pid(node): node["connections"] for node in status["nodes"]}
    killed, survivor = sorted(counts)

    mark = parent.mark
    os.kill(killed, signal.SIGKILL)
    await parent.line(r"worker \d ended", after=mark)
    await parent.line(r"started worker \d", after=mark)
    await wait_for_status(gateway, lambda s: len(s["nodes"]) == 2 and killed not in map(worker_pid, s["nodes"]))
    await broadcast(gateway, "after-restart", {})
    reached = 0
    for client in clients:
        try:
            message = await client.recv(timeout=TIMEOUT)
        except ConnectionClosed:
            continue
        assert message["type"] == "after-restart"
        reached += 1
    assert reached == counts[survivor]
    fresh = await gateway.join(LOCKERS, session_id)
    await fresh.close()

    parent.signal("TERM")
    assert await parent.ended() == (0, None)
    for pid in counts:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def worker_pid(node: dict) -> int:
    """The pid in a node id (host-pid-suffix)."""
    return int(node["id"].rsplit("-", 2)[1])


# -- Redis outage -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_outage_keeps_local_delivery_answers_503_and_loses_nothing(tmp_path, spawn, redis_prefix):
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        # Emits wait for Redis for up to emit_timeout; this outage may outlast the default 5 s.
        a, b = await gateways(spawn, tmp_path, redis.url, redis_prefix, text="emit_timeout = 60.0\n")
        session_id = await create_session(tmp_path, a.config)
        on_a, on_b = await a.join(EVENTS, session_id), await b.join(EVENTS, session_id)
        before = [await emit(a, n) for n in range(5)]
        for client in (on_a, on_b):
            assert [m["seq"] for m in await until_event_marker(client, a)] == [e["seq"] for e in before]

        marks = (a.process.mark, b.process.mark)
        await redis.stop()
        await a.process.line(r"redis writes connection lost", after=marks[0])
        code, health = await get(a, "/healthz")
        assert code == 503 and health["status"] == "unavailable"
        assert any("redis" in name or "redis" in str(value) for name, value in health["checks"].items()), health

        # Broadcasts go on locally at once; events wait for Redis, which numbers them.
        await broadcast(a, "during-outage", {"n": 1}, EVENTS)
        assert (await next_message(on_a))["type"] == "during-outage"
        pending = [defer.ensureDeferred(emit(a, n)) for n in range(5, 15)]
        code, _ = await get(a, "/api/websocket/health", session_id)
        assert code == 503

        await redis.start()
        during = sorted(await defer.gatherResults(pending), key=lambda e: seq_key(e["seq"]))  # seq = store order
        # The events reach both, in seq order, from the log; the broadcast reaches B once A's
        # buffer is written (broadcasts and events travel apart: in either order).
        got = {}
        for name, client in (("a", on_a), ("b", on_b)):
            got[name] = await until_event_marker(client, a)
            assert [m["seq"] for m in got[name] if m["type"] == "locker_state_changed"] == [e["seq"] for e in during]
        broadcasts = [m for m in got["b"] if m["type"] == "during-outage"]
        if not broadcasts:
            broadcasts = [m for m in await until_marker(on_b, a, EVENTS) if m["type"] == "during-outage"]
        assert len(broadcasts) == 1

        # Each connection to Redis comes back on its own backoff: a resume needs B's lookups
        # connection and its event log queries one (until then it is refused 1013 "Event log
        # unavailable").
        for name in ("lookups", "event log queries"):
            await b.process.line(rf"redis {name} (connected|reached)", after=marks[1])
        resumed = await b.connect(f"{EVENTS}?sessionId={session_id}&since={before[-1]['seq']}")
        messages = [await resumed.recv()]
        while messages[-1]["type"] != "resumed":
            messages.append(await resumed.recv())
        assert [m["seq"] for m in messages if m["type"] == "locker_state_changed"] == [e["seq"] for e in during]
        assert messages[-1]["data"]["recovered"] is True
        for gateway, mark in zip((a, b), marks):
            for name in REDIS_CONNECTIONS:
                await gateway.process.line(f"redis {name} (connected|reached)", after=mark)
            code, health = await get(gateway, "/healthz")
            assert code == 200, health
    finally:
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_handshake_while_redis_sessions_are_unreachable_is_refused_with_503(tmp_path, spawn, redis_prefix):
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        a = await start_gateway(spawn, tmp_path / "node", redis.url, redis_prefix)
        session_id = await create_session(tmp_path, a.config)
        mark = a.process.mark
        await redis.stop()
        await a.process.line(r"redis lookups connection lost", after=mark)
        from websockets.exceptions import InvalidStatus

        try:
            await a.connect(f"{LOCKERS}?sessionId={session_id}")
        except InvalidStatus as e:
            assert e.response.status_code == 503
        else:
            raise AssertionError("the handshake was accepted without a session store")
        status, body = await post(a, "/api/websocket/broadcast", {"namespace": LOCKERS, "event": "x", "data": {}})
        assert status == 200, body  # an API token needs no store
        response = await treq.post(
            a.http("/api/websocket/broadcast"), persistent=False,
            data=json.dumps({"namespace": LOCKERS, "event": "x", "data": {}}).encode(),
            headers={b"Authorization": [f"Bearer {session_id}".encode()], b"Content-Type": [b"application/json"]},
        )
        body = await treq.json_content(response)
        assert (response.code, body["message"]) == (503, "Redis is unreachable; try again")
        assert session_id not in a.process.log
    finally:
        await redis.stop()


# -- the command -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cli_sessions_list_shows_redis_sessions_by_reference(tmp_path, redis_url, redis_prefix):
    config = redis_config(tmp_path, redis_url, redis_prefix)
    session_id = await create_session(tmp_path, config, user="carol", role="kiosk")
    out, err, code = await eformws("sessions", "list", "--config", str(config), cwd=tmp_path)
    assert code == 0, err
    assert session_id not in out
    assert re.search(r"^[0-9a-f]{12}\s+carol\s+kiosk\s+.*\blive$", out, re.M), out


@pytest.mark.slow  # ~5 s: waits out the 5 s Redis connect timeout
@pytest_twisted.ensureDeferred
async def test_cli_with_unreachable_redis_fails_with_one_line(tmp_path, redis_prefix):
    from processes import free_port

    config = redis_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", redis_prefix)
    out, err, code = await eformws("sessions", "list", "--config", str(config), cwd=tmp_path)
    assert code == 1 and out == ""
    assert re.fullmatch(r"eformws: cannot reach redis at 127\.0\.0\.1:\d+ within 5 s\n", err), err


# -- the connection itself --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_command_before_the_first_connection_waits_for_it(tmp_path):
    from eformws.backends.redis import RedisAddress, RedisConnection

    redis = RedisServer(tmp_path)
    connection = RedisConnection(RedisAddress.parse(redis.url), "test", 0.05, 0.2)
    connection.startService()
    try:
        answer = connection.command("PING")  # Redis is not even started yet
        await redis.start()
        assert await answer == "PONG"
    finally:
        await connection.stopService()
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_command_fails_with_redis_unavailable_when_redis_never_came(tmp_path):
    from processes import free_port

    from eformws.backends.redis import RedisAddress, RedisConnection, RedisUnavailable

    connection = RedisConnection(RedisAddress.parse(f"redis://127.0.0.1:{free_port()}/0"), "test", 0.05, 0.2,
                                 startup_wait=0.3)
    connection.startService()
    try:
        with pytest.raises(RedisUnavailable):
            await connection.command("PING")
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_a_command_fails_at_once_during_an_outage_after_a_connection(tmp_path):
    from eformws.backends.redis import RedisAddress, RedisConnection, RedisUnavailable

    redis = RedisServer(tmp_path)
    await redis.start()
    connection = RedisConnection(RedisAddress.parse(redis.url), "test", 5.0, 10.0, startup_wait=60.0)
    connection.startService()
    try:
        await connection.when_connected()
        lost = defer.Deferred()
        connection.on_disconnected.append(lambda: lost.called or lost.callback(None))
        await redis.stop()
        await lost
        with pytest.raises(RedisUnavailable):
            await connection.command("PING")  # at once: the startup wait (60 s) is not used
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_a_connection_a_proxy_accepts_and_drops_while_redis_is_down_keeps_reconnecting(tmp_path):
    from proxy import FaultyProxy
    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogPublisher

    from eformws.backends.redis import RedisAddress, RedisConnection

    redis = RedisServer(tmp_path)
    await redis.start()
    proxy = FaultyProxy("127.0.0.1", redis.port)  # accepts even while Redis is down, then drops
    port = proxy.start(reactor)
    connection = RedisConnection(RedisAddress.parse(f"redis://127.0.0.1:{port}/0"), "test", 0.05, 0.2)
    try:
        await redis.stop()
        dropped = defer.Deferred()

        def observe(event):
            if "could not set dbid" in formatEvent(event) and not dropped.called:
                dropped.callback(None)  # SELECT failed on a connection lost at once

        globalLogPublisher.addObserver(observe)
        try:
            connection.startService()
            await dropped.addTimeout(TIMEOUT, reactor)
        finally:
            globalLogPublisher.removeObserver(observe)
        await redis.start()
        await connection.when_connected().addTimeout(TIMEOUT, reactor)
        assert await connection.command("PING") == "PONG"
    finally:
        await connection.stopService()
        await proxy.stop()
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_handshake_is_not_held_behind_writes_that_redis_has_paused(start_server, own_redis, redis_admin,
                                                                          redis_prefix):
    # A failover pauses writes (CLIENT PAUSE WRITE); the sessions' connection carries no write to wait behind.
    server = await start_server({"redis.url": own_redis.url, "redis.prefix": redis_prefix})
    session_id = await server.session()
    await redis_admin.command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        emitted = server.service.events.emit("locker_state_changed", locker())  # waits in Redis, on `writes`
        client = await within(defer.ensureDeferred(server.join(LOCKERS, session_id)), 5.0)
        assert client.connection_id and not emitted.called
    finally:
        await redis_admin.command("CLIENT", "UNPAUSE")
    await within(emitted)


@pytest_twisted.ensureDeferred
async def test_status_is_not_held_behind_writes_that_redis_has_paused(start_server, own_redis, redis_admin,
                                                                     redis_prefix):
    server = await start_server({"redis.url": own_redis.url, "redis.prefix": redis_prefix,
                                 "auth.api_tokens": ["status-token"]})
    await redis_admin.command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        server.service.nodes.heartbeat()  # a write waiting in Redis on `writes`
        response = await within(treq.get(server.http("/api/websocket/status"), persistent=False,
                                         headers={b"Authorization": [b"Bearer status-token"]}), 5.0)
        assert response.code == 200
    finally:
        await redis_admin.command("CLIENT", "UNPAUSE")


@pytest_twisted.ensureDeferred
async def test_a_stopped_node_leaves_the_registry_for_good_even_when_writes_were_paused(own_redis, redis_prefix):
    from eformws.backends.nodes import NodeRegistry
    from eformws.backends.redis import RedisAddress, RedisConnection
    from eformws.delivery.hub import Hub

    address = RedisAddress.parse(own_redis.url)
    admin = RedisConnection(address, "test", 0.05, 0.2)
    admin.startService()
    await within(admin.when_connected())
    registry = NodeRegistry(address, redis_prefix, "node-under-test", Hub(), interval=0.02, ttl=60.0)
    registry.startService()
    await within(registry.connection.when_connected())
    key = f"{redis_prefix}node:node-under-test"
    await within(registry.heartbeat())  # in the registry
    assert await admin.command("EXISTS", key) == 1
    await admin.command("CLIENT", "PAUSE", 300, "WRITE")  # the leaving waits; heartbeats must not follow it
    # Once the stop is done, every command the registry sent before its SREM has run (one
    # connection: in order), so a heartbeat that followed the DEL would show now.
    await within(registry.stopService())
    try:
        assert await admin.command("EXISTS", key) == 0
        assert "node-under-test" not in (await admin.command("SMEMBERS", f"{redis_prefix}nodes") or [])
    finally:
        admin.stopService()
