"""The Python client (`eformws.client`) against a real in-process gateway: callbacks, rooms,
reconnection (backoff, re-joining, resume without gap or duplicate), close, refusals."""

from __future__ import annotations

import json
import random

import pytest
import pytest_twisted
import txaio
from twisted.internet import defer, reactor, task
from twisted.internet.defer import CancelledError
from twisted.logger import formatEvent, globalLogPublisher

from eformws.client import (
    Disconnect,
    EformClient,
    GaveUp,
    Refused,
    ServerError,
    backoff_delay,
    seq_order,
)

LOCKERS, EVENTS = "/ws/lockers", "/ws/events"
TIMEOUT = 15.0


# -- harness -----------------------------------------------------------------------------


class Calls:
    """What a callback was called with, and Deferreds that fire once it has `n` calls."""

    def __init__(self):
        self.values: list = []
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def __call__(self, value) -> None:
        self.values.append(value)
        for entry in list(self._waiting):
            if len(self.values) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(self.values[: entry[0]])

    def reach(self, n: int) -> defer.Deferred:
        """Fires with the first `n` values once there are that many."""
        if len(self.values) >= n:
            return defer.succeed(self.values[:n])
        d = defer.Deferred()
        self._waiting.append((n, d))
        d.addTimeout(TIMEOUT, reactor)
        return d

    def next(self) -> defer.Deferred:
        return self.reach(len(self.values) + 1).addCallback(lambda values: values[-1])


class Watched:
    """A client with a recorder on every callback."""

    def __init__(self, client: EformClient, event_type: str = "*"):
        self.client = client
        self.events, self.connects, self.disconnects, self.resumes = Calls(), Calls(), Calls(), Calls()
        client.on(event_type, self.events)
        client.on_connect(self.connects)
        client.on_disconnect(self.disconnects)
        client.on_resumed(self.resumes)

    @property
    def seqs(self) -> list[str]:
        return [e["seq"] for e in self.events.values if "seq" in e]


def watched(server, session_id, path=LOCKERS, event_type="*", **options) -> Watched:
    options.setdefault("clock", task.Clock())  # reconnection waits only when a test advances it
    return Watched(EformClient(server.http(""), path, session_id, **options), event_type)


@pytest.fixture
def clients():
    """Clients a test made are closed after it."""
    made: list[EformClient] = []
    yield made
    for client in made:
        pytest_twisted.blockon(client.close())


async def connected(clients, server, session_id, path=LOCKERS, event_type="*", **options) -> Watched:
    w = watched(server, session_id, path, event_type, **options)
    clients.append(w.client)
    w.client.connect()
    assert await w.client.when_connected() is w.client
    return w


def emit(server, n: int, kiosk="kiosk-1"):
    return server.service.events.emit_locker_state_changed(f"{kiosk}:{n}", "closed", "open", kiosk)


async def emit_many(server, count: int, kiosks=("kiosk-1",)) -> list[dict]:
    return [await emit(server, n, kiosks[n % len(kiosks)]) for n in range(count)]


def server_connections(server, path=LOCKERS) -> list:
    return list(server.hub.namespaces[path].connections.values())


async def drop_every_connection(server, w: Watched) -> Disconnect:
    """The server aborts every connection (no close handshake): a network blip."""
    lost = w.disconnects.next()
    for connection in list(server.hub.connections()):
        connection.abort()
    disconnect = await lost
    assert disconnect.was_connected and disconnect.code == 1006
    assert disconnect.reconnect_in is not None
    assert not w.client.connected
    return disconnect


def ordered(seqs) -> list[str]:
    return sorted(seqs, key=seq_order)


# -- events and callbacks --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_callbacks_get_the_events_of_their_type_and_star_gets_every_event(start_server, clients):
    server = await start_server()
    w = await connected(clients, server, await server.session(), EVENTS)
    lockers, statuses = Calls(), Calls()
    w.client.on("locker_state_changed", lockers)
    w.client.on("system_status", statuses)
    stored = [
        await emit(server, 1),
        await server.service.events.emit_system_status("kiosk", "online", 99),
        await emit(server, 2),
    ]
    await server.service.events.broadcast(EVENTS, "maintenance", {"minutes": 5})
    everything = await w.events.reach(4)
    assert [e["type"] for e in everything] == ["locker_state_changed", "system_status", "locker_state_changed", "maintenance"]
    assert everything[:3] == stored
    assert everything[3]["data"] == {"minutes": 5}
    assert await lockers.reach(2) == [stored[0], stored[2]]
    assert statuses.values == [stored[1]]


@pytest_twisted.ensureDeferred
async def test_when_connected_fires_once_in_the_default_room_and_on_connect_gets_the_connection(start_server, clients):
    server = await start_server()
    w = await connected(clients, server, await server.session())
    [connection] = w.connects.values
    [on_server] = server_connections(server)
    assert connection["connectionId"] == on_server.id == w.client.connection_id
    assert connection["authenticated"] is True
    assert w.client.connected
    assert w.client.rooms == {"locker_updates"}
    assert on_server.rooms == {"locker_updates"}
    assert await w.client.when_connected() is w.client


@pytest_twisted.ensureDeferred
async def test_the_first_connection_delivers_the_servers_replay_in_order(start_server, clients):
    server = await start_server()
    stored = await emit_many(server, 5)
    w = await connected(clients, server, await server.session())
    assert w.events.values == stored
    assert w.client.last_seq == stored[-1]["seq"]
    assert w.resumes.values == []  # nothing was resumed: a first connection


@pytest_twisted.ensureDeferred
async def test_without_replay_the_first_connection_delivers_only_live_events(start_server, clients):
    server = await start_server()
    old = await emit_many(server, 3)
    w = await connected(clients, server, await server.session(), replay=False)
    new = await emit(server, 99)
    assert await w.events.reach(1) == [new]
    assert w.client.last_seq == new["seq"] and old[-1]["seq"] < new["seq"]


@pytest_twisted.ensureDeferred
async def test_join_fires_on_room_joined_room_broadcasts_arrive_and_leave_stops_them(start_server, clients):
    server = await start_server()
    w = await connected(clients, server, await server.session())
    assert await w.client.join("kiosk-9") == "kiosk-9"
    assert {"locker_updates", "kiosk-9"} == w.client.rooms == server_connections(server)[0].rooms
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-9", "door", {"n": 1})
    assert (await w.events.next())["data"] == {"n": 1}
    assert await w.client.leave("kiosk-9") == "kiosk-9"
    assert server_connections(server)[0].rooms == {"locker_updates"}
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-9", "door", {"n": 2})
    await server.service.events.broadcast(LOCKERS, "marker", {})
    assert (await w.events.next())["type"] == "marker"  # the room broadcast, sent first, never came
    assert w.client.rooms == {"locker_updates"}


@pytest_twisted.ensureDeferred
async def test_a_join_the_server_refuses_fails_with_its_error_and_is_not_retried(start_server, clients):
    server = await start_server()
    kiosk = await server.session("kim", "kiosk", kiosk="kiosk-1")
    w = await connected(clients, server, kiosk)
    with pytest.raises(ServerError) as refused:
        await w.client.join("kiosk-2")
    assert refused.value.code == "forbidden"
    assert await w.client.join("kiosk-1") == "kiosk-1"  # its own kiosk room is allowed
    assert w.client.rooms == {"locker_updates", "kiosk-1"}


@pytest_twisted.ensureDeferred
async def test_the_same_event_sent_twice_is_delivered_once(start_server, clients):
    server = await start_server()
    w = await connected(clients, server, await server.session())
    event = await emit(server, 1)
    await w.events.reach(1)
    [on_server] = server_connections(server)
    on_server.sendMessage(json.dumps(event).encode(), False)  # as a resume overlapping live delivery would
    await server.service.events.broadcast(LOCKERS, "marker", {})
    assert [e["type"] for e in await w.events.reach(2)] == ["locker_state_changed", "marker"]


# -- reconnection and resume ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def start_with_store(request, start_server):
    """`await start_with_store()`: a server whose event store is SQLite (seqs like "42") or
    Redis (seqs like "1732540800123-0"), its Redis connections up."""

    if request.param == "redis":  # resolved here: the suite's Redis may have to start first
        redis = {"redis.url": request.getfixturevalue("redis_url"), "redis.prefix": request.getfixturevalue("redis_prefix")}

    async def start():
        if request.param == "sqlite":
            return await start_server()
        server = await start_server(redis)
        service = server.service
        for part in (service.sessions, service.event_store, service.bus, service.nodes):
            connection = getattr(part, "connection", None)
            if connection is not None:
                await connection.when_connected()
        return server

    return start


@pytest_twisted.ensureDeferred
async def test_after_the_server_drops_it_the_client_rejoins_and_resumes_without_gap_or_duplicate(
    start_with_store, clients
):
    server = await start_with_store()
    clock = task.Clock()
    w = await connected(clients, server, await server.session(), clock=clock)
    assert await w.client.join("kiosk-7") == "kiosk-7"
    before = await emit_many(server, 3)
    await w.events.reach(3)
    disconnect = await drop_every_connection(server, w)
    missed = await emit_many(server, 300, kiosks=("kiosk-1", "kiosk-7"))
    meanwhile = [emit(server, 1000 + n) for n in range(100)]  # emitted while it reconnects
    clock.advance(disconnect.reconnect_in)
    resumed = await w.resumes.next()
    emitted = before + missed + await defer.gatherResults(meanwhile)
    got = await w.events.reach(len(emitted))
    assert [e["seq"] for e in got] == [e["seq"] for e in emitted] == ordered(e["seq"] for e in emitted)
    assert got == emitted
    # How many came while catching up depends on how far this process had read the log
    # (with Redis it may still be delivering the missed events live): all came, once, in order.
    assert resumed.recovered is True
    await w.connects.reach(2)  # on_connect comes after on_resumed
    [on_server] = server_connections(server)
    assert on_server.rooms == {"locker_updates", "kiosk-7"} == w.client.rooms
    arriving = w.events.next()  # asked first: with Redis the event may arrive before emit answers
    after = await emit(server, 5000)
    assert await arriving == after
    assert len(w.events.values) == len(emitted) + 1  # and nothing else came


@pytest_twisted.ensureDeferred
async def test_rooms_outside_the_default_room_are_joined_again_and_their_missed_events_resumed(start_server, clients):
    server = await start_server()
    clock = task.Clock()
    w = await connected(clients, server, await server.session(), rooms=["kiosk-7"], default_room=False, clock=clock)
    assert server_connections(server)[0].rooms == {"kiosk-7"} == w.client.rooms
    first = await emit_many(server, 4, kiosks=("kiosk-7", "kiosk-8"))
    assert await w.events.reach(2) == first[0::2]
    disconnect = await drop_every_connection(server, w)
    missed = await emit_many(server, 200, kiosks=("kiosk-7", "kiosk-8"))
    clock.advance(disconnect.reconnect_in)
    resumed = await w.resumes.next()
    assert (resumed.recovered, resumed.count, resumed.seq) == (True, 100, missed[-1]["seq"])
    expected = first[0::2] + missed[0::2]
    assert await w.events.reach(len(expected)) == expected
    assert server_connections(server)[0].rooms == {"kiosk-7"}
    await server.service.events.broadcast_to_room(LOCKERS, "locker_updates", "marker", {})  # not a member: never delivered
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-7", "marker-7", {})
    assert (await w.events.next())["type"] == "marker-7"


@pytest_twisted.ensureDeferred
async def test_after_a_server_restart_on_the_same_port_the_client_resumes_what_the_new_process_stored(
    start_server, clients
):
    first = await start_server()
    session_id = await first.session()
    clock = task.Clock()
    w = await connected(clients, first, session_id, clock=clock)
    before = await emit_many(first, 3)
    await w.events.reach(3)
    lost = w.disconnects.next()
    port = first.port
    await first.service.stopService()
    disconnect = await lost
    assert (disconnect.code, disconnect.reason) == (1001, "Server shutdown")
    second = await start_server({"server.port": port})  # the same SQLite file
    missed = await emit_many(second, 50)
    clock.advance(disconnect.reconnect_in)
    resumed = await w.resumes.next()
    assert (resumed.recovered, resumed.count, resumed.seq) == (True, 50, missed[-1]["seq"])
    assert w.events.values == before + missed
    assert w.client.last_seq == missed[-1]["seq"]


@pytest_twisted.ensureDeferred
async def test_a_client_given_since_resumes_from_it_on_its_first_connection(start_server, clients):
    server = await start_server()
    session_id = await server.session()
    earlier = await connected(clients, server, session_id)
    seen = await emit_many(server, 2)
    await earlier.events.reach(2)
    cursor = earlier.client.last_seq
    await earlier.client.close()
    missed = await emit_many(server, 20)
    w = await connected(clients, server, session_id, since=cursor)
    assert w.events.values == missed  # no replay of what the earlier run saw
    assert [(r.recovered, r.count) for r in w.resumes.values] == [(True, 20)]
    assert cursor == seen[-1]["seq"]


@pytest_twisted.ensureDeferred
async def test_recovered_false_is_reported_when_the_missed_events_are_gone_and_live_events_go_on(start_server, clients):
    server = await start_server({"events.max_events": 10})
    clock = task.Clock()
    w = await connected(clients, server, await server.session(), clock=clock)
    await emit(server, 0)
    await w.events.reach(1)
    disconnect = await drop_every_connection(server, w)
    missed = await emit_many(server, 30)
    await server.service.event_store.expire()  # the cap deletes what the client would resume from
    clock.advance(disconnect.reconnect_in)
    resumed = await w.resumes.next()
    # What is still held is replayed instead: the newest events, as to a new connection.
    assert (resumed.recovered, resumed.count, resumed.seq) == (False, 10, missed[-1]["seq"])
    assert w.events.values[1:] == missed[-10:]
    assert w.client.last_seq == missed[-1]["seq"]
    arriving = w.events.next()
    live = await emit(server, 99)
    assert await arriving == live


@pytest_twisted.ensureDeferred
async def test_after_the_event_store_was_reset_new_events_with_old_seqs_are_still_delivered(start_server, clients, tmp_path):
    events_path = tmp_path / "events.db"
    first = await start_server({"events.path": str(events_path)})
    clock = task.Clock()
    w = await connected(clients, first, await first.session(), clock=clock)
    seen = await emit_many(first, 5)
    await w.events.reach(5)
    lost = w.disconnects.next()
    port = first.port
    await first.service.stopService()
    disconnect = await lost
    for path in tmp_path.glob("events.db*"):
        path.unlink()  # a new, empty store: its seqs count from 1 again
    second = await start_server({"events.path": str(events_path), "server.port": port})
    renewed = await emit_many(second, 2)
    assert [e["seq"] for e in renewed] == ["1", "2"]
    clock.advance(disconnect.reconnect_in)
    resumed = await w.resumes.next()
    # Another event log (a new epoch): not recovered; what it holds is replayed instead.
    assert (resumed.recovered, resumed.count, resumed.seq, resumed.epoch) == (False, 2, "2", renewed[-1]["epoch"])
    assert renewed[-1]["epoch"] != seen[-1]["epoch"]
    live = [await emit(second, n) for n in range(3)]  # seqs 3, 4, 5: delivered before, as other events
    assert await w.events.reach(len(seen) + 2 + 3) == seen + renewed + live
    assert w.client.last_seq == "5"


# -- backoff -------------------------------------------------------------------------------


def test_backoff_delays_are_full_jitter_under_a_ceiling_that_doubles_up_to_the_cap():
    draws = random.Random(8)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0, 2.0, draws.random) for _ in range(500)]
        assert all(0 <= d < ceiling for d in delays)
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling  # spread over all of it
    assert backoff_delay(10_000, random=lambda: 0.999) < 30.0  # no overflow, still capped


def test_backoff_delays_are_reproducible_with_a_seeded_random_and_differ_between_seeds():
    def delays(seed):
        draws = random.Random(seed)
        return [backoff_delay(n, random=draws.random) for n in range(8)]

    assert delays(1) == delays(1)
    assert delays(1) != delays(2)


def test_reconnection_defaults_are_half_a_second_doubling_to_thirty_seconds():
    assert [backoff_delay(n, random=lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


@pytest_twisted.ensureDeferred
async def test_each_attempt_waits_its_delay_and_the_client_gives_up_after_max_attempts(start_server, clients):
    server = await start_server()
    session_id = await server.session()
    port = server.port
    await server.service.stopService()  # nothing listens there any more
    clock = task.Clock()
    w = Watched(EformClient(f"http://127.0.0.1:{port}", LOCKERS, session_id, clock=clock,
                            initial_delay=1.0, max_delay=5.0, max_attempts=5, random=lambda: 0.5))
    clients.append(w.client)
    closed = w.client.when_closed()
    w.client.connect()
    waits = []
    for attempt in range(5):
        disconnect = await w.disconnects.reach(attempt + 1)
        disconnect = disconnect[-1]
        assert not disconnect.was_connected and disconnect.code is None
        waits.append(disconnect.reconnect_in)
        clock.advance(disconnect.reconnect_in * 0.99)
        assert len(w.disconnects.values) == attempt + 1 and clock.getDelayedCalls()  # still waiting
        clock.advance(disconnect.reconnect_in * 0.01)
    assert waits == [0.5, 1.0, 2.0, 2.5, 2.5]
    with pytest.raises(GaveUp):
        await closed
    assert w.disconnects.values[-1].reconnect_in is None
    assert clock.getDelayedCalls() == []


# -- close and refusals ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_close_while_connected_closes_normally_and_never_reconnects(start_server, clients):
    server = await start_server()
    clock = task.Clock()
    w = await connected(clients, server, await server.session(), clock=clock)
    [on_server] = server_connections(server)
    gone = on_server.closed
    assert await w.client.close() is None
    await gone
    [disconnect] = w.disconnects.values
    assert (disconnect.was_connected, disconnect.code, disconnect.reconnect_in) == (True, 1000, None)
    assert clock.getDelayedCalls() == []
    assert not w.client.connected
    with pytest.raises(CancelledError):
        await w.client.when_connected()


@pytest_twisted.ensureDeferred
async def test_close_while_waiting_to_reconnect_cancels_the_attempt(start_server, clients):
    server = await start_server()
    clock = task.Clock()
    w = await connected(clients, server, await server.session(), clock=clock)
    await drop_every_connection(server, w)
    waiting = w.client.when_connected()
    assert clock.getDelayedCalls()
    await w.client.close()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert server_connections(server) == []
    with pytest.raises(CancelledError):
        await waiting


@pytest_twisted.ensureDeferred
async def test_an_unknown_session_is_refused_for_good_without_retrying(start_server, clients):
    server = await start_server()
    await server.session()
    clock = task.Clock()
    w = watched(server, "f" * 43, clock=clock)
    clients.append(w.client)
    w.client.connect()
    with pytest.raises(Refused) as refused:
        await w.client.when_connected()
    assert "Authentication failed" in str(refused.value)
    assert "f" * 43 not in str(refused.value)
    [disconnect] = w.disconnects.values
    assert (disconnect.code, disconnect.reconnect_in) == (1008, None)
    assert clock.getDelayedCalls() == []
    with pytest.raises(Refused):
        await w.client.when_closed()


@pytest_twisted.ensureDeferred
async def test_an_unknown_namespace_is_refused_for_good(start_server, clients):
    server = await start_server()
    w = watched(server, await server.session(), path="/ws/nope")
    clients.append(w.client)
    w.client.connect()
    with pytest.raises(Refused) as refused:
        await w.client.when_connected()
    assert "404" in str(refused.value)


@pytest_twisted.ensureDeferred
async def test_the_session_id_never_appears_in_the_log_even_at_debug_level(start_server, clients):
    server = await start_server()
    session_id = await server.session()
    lines: list[str] = []

    def observe(event):
        if "Server" not in event.get("log_namespace", "") and "eformws.websocket" not in event.get("log_namespace", ""):
            lines.append(formatEvent(event) + repr(event))  # the client's side: this process serves too

    previous = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    globalLogPublisher.addObserver(observe)
    try:
        clock = task.Clock()
        w = await connected(clients, server, session_id, clock=clock)
        disconnect = await drop_every_connection(server, w)
        clock.advance(disconnect.reconnect_in)
        await w.connects.reach(2)
        stranger = watched(server, session_id + "x").client
        stranger.connect()
        with pytest.raises(Refused):
            await stranger.when_closed()
    finally:
        globalLogPublisher.removeObserver(observe)
        txaio.set_global_log_level(previous)
    assert any("eformws.client" in line for line in lines)
    assert not [line for line in lines if session_id in line]
