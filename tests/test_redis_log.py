"""The Redis event log and bus under faults, against real redis-servers: a reader that finds
events removed unread, the log replaced or gone back in time says so; deadlines Redis
enforces; writes refused for memory retried on their own; answers lost on the way back;
settings that lose data."""

from __future__ import annotations

import json
import time
from functools import partial

import pytest
import pytest_twisted
from conftest import Awaited, locker, until_redis_clock_passes
from conftest import within as bounded
from processes import RedisServer
from proxy import FaultyProxy
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web._newclient import ResponseNeverReceived

from eformws import events
from eformws.backends.redis import RedisAddress, RedisConnection, WritePause, check_durability
from eformws.bus.redis import RedisBus
from eformws.core.message import Message, Target
from eformws.events.store import Idempotency, addresses_of, fingerprint
from eformws.events.store.redis import APPEND, EmitTimeout, EmitUnconfirmed, RedisEventStore

TIMEOUT = 10.0


def locker_envelope(n: int) -> dict:
    return events.build("locker_state_changed", locker(n))


def append(store, n: int):
    envelope = locker_envelope(n)
    d = store.append(envelope, addresses_of(events.targets_of(envelope)), 3600.0)
    return d.addCallback(lambda appended: appended.envelope)


within = partial(bounded, seconds=TIMEOUT)  # Redis round trips on a busy test machine


def logged(text: str) -> defer.Deferred:
    """Fires once a log event whose text contains `text` is emitted."""
    d = defer.Deferred()

    def observe(event):
        if text in formatEvent(event) and not d.called:
            globalLogPublisher.removeObserver(observe)
            d.callback(None)

    globalLogPublisher.addObserver(observe)
    return within(d)


class Follower(Awaited):
    """What `follow` hands over: events in order, resets, and Deferreds for both."""

    def __init__(self):
        super().__init__()
        self.events: list[dict] = []
        self.resets: list = []

    def event(self, envelope, created) -> None:
        self.events.append(envelope)
        self.wake()

    def reset(self, position, why) -> None:
        self.resets.append((position, why))
        self.wake()


@pytest.fixture
def stores(redis_url, redis_prefix):
    """`stores(**options)`: started Redis event stores on the suite's Redis, one prefix."""
    started = []

    def make(url=None, **options):
        options.setdefault("block_ms", 200)
        store = RedisEventStore(RedisAddress.parse(url or redis_url), redis_prefix, options.pop("max_events", 100_000),
                                10_000, options.pop("emit_timeout", 5.0), initial_delay=0.05, max_delay=0.2, **options)
        store.startService()
        started.append(store)
        return store

    yield make
    for store in started:
        if store.running:
            pytest_twisted.blockon(defer.maybeDeferred(store.stopService))


@pytest_twisted.async_yield_fixture
async def through_proxy(stores, redis_url):
    """(proxy, follower, make): a FaultyProxy in front of the suite's Redis, a Follower that
    reads Redis directly, and `make(**options)` for stores that reach Redis through the proxy."""
    upstream = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(upstream.host, upstream.port)
    port = proxy.start(reactor)
    follower = Follower()
    await within(stores().follow(follower.event, follower.reset))
    yield proxy, follower, lambda **options: stores(f"redis://127.0.0.1:{port}/{upstream.db}", **options)
    await proxy.stop()


async def following(stores) -> tuple[Follower, object]:
    """A new store of the suite's Redis, following the log into a Follower: (follower, store)."""
    follower = Follower()
    reader = stores()
    await within(reader.follow(follower.event, follower.reset))
    return follower, reader


async def connected(url: str) -> RedisConnection:
    connection = RedisConnection(RedisAddress.parse(url), "test", 0.05, 0.2)
    connection.startService()
    await within(connection.when_connected())
    return connection


# -- following the log ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_reader_delivers_every_append_of_every_store_once_in_seq_order(stores):
    follower, reader = await following(stores)
    writers = [stores(), stores()]
    appended = await defer.gatherResults([append(writers[n % 2], n) for n in range(60)])
    await follower.until(lambda: len(follower.events) >= 60)
    assert [int(e["seq"]) for e in follower.events] == sorted(int(e["seq"]) for e in appended)
    assert {e["id"] for e in follower.events} == {e["id"] for e in appended}
    assert follower.resets == []


@pytest_twisted.ensureDeferred
async def test_a_reader_that_finds_events_removed_unread_says_so_and_goes_on(stores):
    follower = Follower()
    reader = stores()
    start = await within(reader.follow(follower.event, follower.reset))
    await within(reader.reader.stopService())  # the reader falls behind ...
    writer = stores(max_events=10)
    appended = [await append(writer, n) for n in range(50)]
    await writer.expire()  # ... and the cap removes what it had not read
    reader.reader.startService()
    await follower.until(lambda: follower.resets and len(follower.events) >= 10)
    position, why = follower.resets[0]
    assert why == f"events {start.seq + 1} to {int(appended[-11]['seq'])} were removed unread"
    assert [e["seq"] for e in follower.events] == [e["seq"] for e in appended[-10:]]


@pytest_twisted.ensureDeferred
async def test_a_reader_that_finds_the_log_replaced_says_so_and_follows_the_new_one(stores):
    follower, reader = await following(stores)
    writer = stores()
    old = await append(writer, 1)
    await follower.until(lambda: len(follower.events) == 1)
    await writer.connection.command("DEL", writer.stream, writer.meta)  # deleted, evicted, or Redis restarted empty
    new = await append(writer, 2)
    assert new["epoch"] != old["epoch"] and new["seq"] == "1"
    await follower.until(lambda: len(follower.events) == 2)
    assert follower.resets[0][0].epoch == new["epoch"]
    assert follower.events[-1]["id"] == new["id"]


# -- deadlines --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_append_redis_did_not_take_in_time_fails_and_is_never_written(own_redis, stores):
    store = stores(own_redis.url, emit_timeout=0.3)
    await within(store.connection.when_connected())
    await own_redis.stop()
    with pytest.raises(EmitTimeout):
        await within(append(store, 1))
    await own_redis.start()
    await within(store.connection.when_connected())
    later = await within(append(store, 2))  # the connection is back: this one is written
    entries = await store.connection.command("XRANGE", store.stream, "-", "+")
    assert [fields[fields.index("e") + 1] for _, fields in entries if "e" in fields] == [
        _stored_text(later)
    ]


def _stored_text(envelope: dict) -> str:
    import json

    return json.dumps({**envelope, "seq": None, "epoch": None}, separators=(",", ":"))


@pytest_twisted.ensureDeferred
async def test_the_append_script_refuses_a_write_that_reaches_redis_after_its_deadline(stores):
    store = stores()
    await within(store.connection.when_connected())
    envelope = locker_envelope(1)
    reply = await APPEND.run(
        store.connection, [store.stream, store.meta, store.key_prefix + "late"],
        [int((time.time() - 1) * 1000), "epoch", 1000, "{}", "[]", "0", "0", "-", 1000],
    )
    assert reply == ["late"]
    assert int(await store.connection.command("EXISTS", store.key_prefix + "late")) == 0
    assert envelope["seq"] is None


# -- writes Redis refuses -----------------------------------------------------------------------


async def refuse_writes(connection) -> None:
    """Put Redis over its memory limit with noeviction: every write is refused (OOM)."""
    await connection.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    await connection.command("SETRANGE", "filler", 4_000_000, "x")
    await connection.command("CONFIG", "SET", "maxmemory", "2mb")


@pytest_twisted.ensureDeferred
async def test_an_append_refused_for_memory_waits_and_is_written_without_another_append(own_redis, stores):
    admin = await connected(own_redis.url)
    store = stores(own_redis.url, emit_timeout=30.0)
    await within(store.connection.when_connected())
    await refuse_writes(admin)
    refused = logged("redis refuses writes to the event log")
    pending = append(store, 1)
    await refused
    with pytest.raises(Exception, match="refuses writes"):
        await store.ping()  # what /healthz asks: 503 meanwhile
    assert not pending.called
    await admin.command("CONFIG", "SET", "maxmemory", "0")
    stored = await within(pending)
    assert stored["seq"] == "1"
    await store.ping()
    admin.stopService()


@pytest_twisted.ensureDeferred
async def test_resume_and_replay_are_answered_while_redis_refuses_writes(own_redis, stores):
    admin = await connected(own_redis.url)
    store = stores(own_redis.url)
    appended = [await within(append(store, n)) for n in range(3)]
    await refuse_writes(admin)
    found = await within(store.since(appended[0]["seq"], appended[0]["epoch"], _filter("/ws/lockers", "locker_updates"), 10))
    assert (found.recovered, [e["id"] for e in found.events]) == (True, [e["id"] for e in appended[1:]])
    recent = await within(store.recent(_filter("/ws/lockers", "locker_updates"), 3600, 10))
    assert [e["id"] for e in recent] == [e["id"] for e in appended]
    await admin.command("CONFIG", "SET", "maxmemory", "0")
    await admin.stopService()


@pytest_twisted.ensureDeferred
async def test_broadcasts_refused_for_memory_reach_the_other_process_once_in_order(own_redis, redis_prefix):
    admin = await connected(own_redis.url)
    address = RedisAddress.parse(own_redis.url)
    sender = RedisBus(address, redis_prefix, "sender", 1000, 10_000, initial_delay=0.05, max_delay=0.2, block_ms=200)
    receiver = RedisBus(address, redis_prefix, "receiver", 1000, 10_000, initial_delay=0.05, max_delay=0.2, block_ms=200)
    got, done = [], defer.Deferred()

    def received(message):
        got.append(message.envelope["data"]["n"])
        if len(got) == 5 and not done.called:
            done.callback(None)
        return 1

    sender.start(lambda message: 0)
    receiver.start(received)
    for bus in (sender, receiver):
        bus.startService()
        await within(bus.writer.when_connected())
        await within(bus.reader.when_connected())
    await refuse_writes(admin)
    refused = logged("redis refuses bus writes")
    for n in range(5):
        sender.publish(Message({"type": "n", "data": {"n": n}}, (Target("/ws/lockers"),)))
    await refused
    assert not sender.healthy and got == []
    await admin.command("CONFIG", "SET", "maxmemory", "0")
    await within(done)
    assert got == [0, 1, 2, 3, 4]
    for bus in (sender, receiver):
        await bus.stopService()
    admin.stopService()


# -- an answer lost on the way back ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_append_whose_answer_was_lost_is_written_once(through_proxy, redis_url):
    proxy, follower, make = through_proxy
    store = make()
    await within(store.connection.when_connected())
    await within(append(store, 0))
    proxy.swallowing = True  # Redis does the write; its answer never arrives
    pending = append(store, 1)
    await follower.until(lambda: len(follower.events) == 2)  # written
    assert not pending.called
    proxy.swallowing = False
    proxy.cut()  # the store reconnects and sends the same append again
    stored = await within(pending)
    assert stored["seq"] == "2" and stored["id"] == follower.events[1]["id"]
    assert int(await _direct_xlen(redis_url, store.stream)) == 2


async def _direct_xlen(url: str, key: str) -> str:
    connection = await connected(url)
    try:
        return await connection.command("XLEN", key)
    finally:
        await connection.stopService()


# -- Redis settings -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_settings_that_lose_data_are_warned_about(own_redis):
    admin = await connected(own_redis.url)  # appendonly yes, noeviction: nothing to say
    assert await check_durability(admin) == []
    await admin.command("CONFIG", "SET", "appendonly", "no")
    await admin.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    warnings = await check_durability(admin)
    assert [w.split(":")[0] for w in warnings] == ["maxmemory-policy is allkeys-lru", "appendonly is no"]
    await admin.stopService()


# -- a request given up on during an outage ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_emit_whose_http_client_gives_up_during_an_outage_is_delivered_once_written(
    own_redis, start_server, redis_prefix
):
    import json

    import treq

    server = await start_server({
        "redis.url": own_redis.url, "redis.prefix": redis_prefix, "redis.reconnect_initial_delay": 0.05,
        "redis.reconnect_max_delay": 0.2, "redis.emit_timeout": 30.0, "auth.api_tokens": ["outage-token"],
        "events.replay_limit": 0,
    })
    client = await server.join("/ws/events", await server.session())
    store = server.service.event_store
    asked, real_append = defer.Deferred(), store.append

    def append_seen(*args):
        d = real_append(*args)
        asked.callback(None)
        return d

    store.append = append_seen
    await own_redis.stop()
    request = treq.post(
        server.http("/api/websocket/events"), persistent=False,
        data=json.dumps({"type": "locker_state_changed", "data": locker_envelope(5)["data"]}).encode(),
        headers={b"Authorization": [b"Bearer outage-token"], b"Content-Type": [b"application/json"]},
    )
    # treq reports a cancelled request as CancelledError, or (once the request was sent) as
    # ResponseNeverReceived around it: either is the giving up this test does.
    request.addErrback(lambda failure: failure.trap(defer.CancelledError, ResponseNeverReceived))
    await within(asked)
    request.cancel()  # the HTTP client gives up while the append waits for Redis
    await own_redis.start()
    delivered = await client.recv(timeout=TIMEOUT)
    assert delivered["data"]["lockerId"] == "kiosk-1:5"
    await within(store.queries.when_connected())  # each connection to Redis comes back on its own backoff
    found = await store.since("0", None, _filter("/ws/events", "system_events"), 10)
    assert [e["id"] for e in found.events] == [delivered["id"]]


def _filter(namespace: str, room: str):
    from eformws.events.store import EventFilter

    return EventFilter(namespace, frozenset({room}))


# -- a log that went back in time ---------------------------------------------------------------


async def rolled_back(stores):
    """A reader that delivered 6 events, then Redis's log restored to how it was after 3 (what
    a restart from an older copy or a failover to a lagging replica does), then 4 events
    appended by a process that had seen the 6."""
    follower, reader = await following(stores)
    writer = stores()
    [await append(writer, n) for n in range(3)]
    stream_copy = await writer.connection.command("DUMP", writer.stream)
    meta_copy = await writer.connection.command("DUMP", writer.meta)
    lost = [await append(writer, n) for n in range(3, 6)]
    await follower.until(lambda: len(follower.events) == 6)
    await writer.connection.command("RESTORE", writer.stream, 0, stream_copy, "REPLACE")
    await writer.connection.command("RESTORE", writer.meta, 0, meta_copy, "REPLACE")
    after = [await append(writer, n) for n in range(10, 14)]
    return follower, reader, lost, after


@pytest_twisted.ensureDeferred
async def test_appends_after_the_log_went_back_in_time_start_a_new_epoch_above_every_seq_seen(stores):
    follower, _, lost, after = await rolled_back(stores)
    assert {e["epoch"] for e in after} != {lost[0]["epoch"]}
    assert [int(e["seq"]) for e in after] == [7, 8, 9, 10]  # no seq of the old epoch is used twice
    await follower.until(lambda: len(follower.events) == 10)
    assert [e["id"] for e in follower.events[6:]] == [e["id"] for e in after]
    assert follower.resets[0][0].epoch == after[0]["epoch"]


@pytest_twisted.ensureDeferred
async def test_a_reader_finds_a_log_that_went_back_in_time_without_being_told(stores):
    follower, reader = await following(stores)
    writer = stores()
    [await append(writer, n) for n in range(3)]
    copies = [await writer.connection.command("DUMP", key) for key in (writer.stream, writer.meta)]
    [await append(writer, n) for n in range(3, 6)]
    await follower.until(lambda: len(follower.events) == 6)
    for key, copy in zip((writer.stream, writer.meta), copies):
        await writer.connection.command("RESTORE", key, 0, copy, "REPLACE")
    unaware = stores()  # a process that never saw seqs 4 to 6: it appends in the old epoch
    again = [await append(unaware, n) for n in range(10, 14)]
    assert [e["seq"] for e in again] == ["4", "5", "6", "7"]
    await follower.until(lambda: follower.resets)  # entry 7 does not follow the 6 it delivered
    assert follower.resets[0][0].epoch != again[0]["epoch"]
    assert [e["seq"] for e in follower.events] == ["1", "2", "3", "4", "5", "6"]


@pytest_twisted.ensureDeferred
async def test_a_resume_from_before_the_log_went_back_in_time_is_not_recovered(stores):
    follower, reader, lost, after = await rolled_back(stores)
    cursor = lost[-1]
    found = await within(reader.since(cursor["seq"], cursor["epoch"], _filter("/ws/lockers", "locker_updates"), 100))
    assert found.recovered is False and found.latest.epoch == after[0]["epoch"]


@pytest_twisted.ensureDeferred
async def test_a_reader_finds_redis_restarted_from_an_older_snapshot_and_goes_on_in_a_new_epoch(tmp_path, stores):
    redis = RedisServer(tmp_path, snapshots_only=True)  # Debian's default persistence
    await redis.start()
    try:
        follower = Follower()
        reader = stores(redis.url)
        await within(reader.follow(follower.event, follower.reset))
        writer = stores(redis.url)
        [await append(writer, n) for n in range(3)]
        await writer.connection.command("SAVE")  # a snapshot, as `save 3600 1` takes one
        [await append(writer, n) for n in range(3, 6)]
        await follower.until(lambda: len(follower.events) == 6)
        await redis.stop("KILL")  # a crash: back from the snapshot, without seqs 4 to 6
        await redis.start()
        await within(writer.connection.when_connected())
        after = [await within(append(writer, n)) for n in range(10, 14)]
        await follower.until(lambda: len(follower.events) == 10)
        assert follower.resets and {e["epoch"] for e in after} == {follower.resets[-1][0].epoch}
        assert [e["id"] for e in follower.events[6:]] == [e["id"] for e in after]
    finally:
        await redis.stop("KILL")


# -- resends of a write that was made -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_append_script_answers_a_resend_of_a_write_it_made_as_made_even_after_the_deadline(stores):
    store = stores()
    await within(store.connection.when_connected())
    keys = [store.stream, store.meta, store.key_prefix + "id:resent"]
    rest = ["candidate", 1000, "{}", "[]", "0", "0", "-", 60_000, "nonce", "", 0, 0, "resent"]
    assert (await APPEND.run(store.connection, keys, [int((time.time() + 5) * 1000), *rest]))[0] == "ok"
    assert (await APPEND.run(store.connection, keys, [int((time.time() - 1) * 1000), *rest]))[0] == "dup"


@pytest_twisted.ensureDeferred
async def test_the_append_script_frees_an_idempotency_key_after_its_window_except_for_a_resend(stores):
    store = stores()
    await within(store.connection.when_connected())
    keys = [store.stream, store.meta, store.key_prefix + "key-digest"]

    def append_as(event_id: str):
        argv = [int((time.time() + 5) * 1000), "candidate", 1000, json.dumps({"id": event_id}), "[]", "0", "0",
                "fingerprint", 60_000, "nonce-" + event_id, "", 0, 50, event_id]  # a 50 ms window
        return APPEND.run(store.connection, keys, argv)

    assert (await append_as("first"))[0] == "ok"
    assert (await append_as("second"))[0] == "dup"  # within the window: the first is the answer
    await until_redis_clock_passes(store.connection, 50)  # the window, on Redis's clock
    assert (await append_as("first"))[0] == "dup"  # a resend of the first is still answered as done
    assert (await append_as("second"))[0] == "ok"  # the key is free for another event


@pytest_twisted.ensureDeferred
async def test_an_emit_stored_before_its_clock_jumped_past_the_deadline_is_not_reported_unstored(through_proxy):
    proxy, follower, make = through_proxy
    step = [0.0]
    store = make(clock=lambda: time.time() + step[0])
    await within(store.connection.when_connected())
    await within(append(store, 0))
    proxy.swallowing = True  # Redis does the write; its answer is lost
    pending = append(store, 1)
    await follower.until(lambda: len(follower.events) == 2)
    step[0] = 6.0  # the host's clock steps forward (NTP) past the deadline
    proxy.swallowing = False
    proxy.cut()  # the store reconnects and resends
    stored = await within(pending)
    assert stored["id"] == follower.events[1]["id"] and stored["seq"] == follower.events[1]["seq"]


@pytest_twisted.ensureDeferred
async def test_a_resend_after_a_lost_answer_is_written_once_whatever_the_idempotency_window(through_proxy):
    proxy, follower, make = through_proxy
    store = make()
    await within(store.connection.when_connected())
    await within(append(store, 0))
    envelope = locker_envelope(1)
    key = Idempotency("order-1", fingerprint("locker_state_changed", envelope["data"]), 0.001)  # gone at once
    proxy.swallowing = True
    pending = store.append(envelope, addresses_of(events.targets_of(envelope)), 3600.0, key)
    await follower.until(lambda: len(follower.events) == 2)
    proxy.swallowing = False
    proxy.cut()
    appended = await within(pending)
    assert (appended.envelope["id"], appended.replayed) == (envelope["id"], False)
    marker = await within(append(store, 2))  # everything written before it is delivered before it
    await follower.until(lambda: follower.events[-1]["id"] == marker["id"])
    assert [e["id"] for e in follower.events[1:]] == [envelope["id"], marker["id"]]


@pytest_twisted.ensureDeferred
async def test_healthz_is_answered_ok_again_once_redis_takes_writes_without_another_emit(own_redis, stores):
    admin = await connected(own_redis.url)
    store = stores(own_redis.url, emit_timeout=0.5)
    await within(append(store, 0))
    await refuse_writes(admin)
    with pytest.raises(EmitTimeout):
        await within(append(store, 1))  # 503: refused until its deadline; nothing waits any more
    with pytest.raises(Exception, match="refuses writes"):
        await store.ping()
    await admin.command("CONFIG", "SET", "maxmemory", "0")
    await store.ping()  # what /healthz asks: answered ok at once
    await admin.stopService()


# -- stopping with appends under way ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_append_sent_before_the_store_stops_is_reported_unconfirmed_never_not_stored(own_redis, stores):
    admin = await connected(own_redis.url)
    store = stores(own_redis.url, emit_timeout=1.0)
    await within(append(store, 1))  # connected, and Redis's clock measured: the next append is sent at once
    await admin.command("CLIENT", "PAUSE", 30_000, "WRITE")  # as a failover does: writes wait in Redis
    try:
        sent = append(store, 2)
        stopped = store.stopService()
        with pytest.raises(EmitUnconfirmed):
            await within(sent)
        await within(stopped)
    finally:
        await admin.command("CLIENT", "UNPAUSE")
        admin.stopService()


# -- the pause after refused writes -----------------------------------------------------------


def test_the_refusals_of_one_round_of_pipelined_writes_back_off_as_one_failure():
    clock, resumed = Clock(), []
    pause = WritePause("writes", lambda: resumed.append(clock.seconds()), 1.0, 60.0, clock)
    for _ in range(256):  # every append in flight answered OOM
        pause.refused(Exception("OOM command not allowed when used memory > 'maxmemory'."))
    [retry] = clock.getDelayedCalls()
    assert 0.5 <= retry.getTime() <= 1.0  # the first failure's delay, not the 60 s cap
    clock.advance(1.0)
    assert len(resumed) == 1


def test_a_write_taken_while_paused_resumes_the_writer_at_once():
    clock, resumed = Clock(), []
    pause = WritePause("writes", lambda: resumed.append(clock.seconds()), 1.0, 60.0, clock)
    pause.refused(Exception("OOM command not allowed when used memory > 'maxmemory'."))
    pause.accepted()  # e.g. /healthz's write went through: Redis has room again
    assert resumed == [0] and clock.getDelayedCalls() == [] and pause.error is None


# -- dead links and the health check ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_command_given_up_by_its_caller_still_finds_a_dead_link(redis_url):
    # /healthz gives up on a PING after 2 s; the connection must still notice that Redis's answers stopped.
    upstream = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(upstream.host, upstream.port)
    port = proxy.start(reactor)
    connection = RedisConnection(RedisAddress.parse(f"redis://127.0.0.1:{port}/{upstream.db}"), "test", 0.05, 0.2,
                                 reply_timeout=0.5)
    connection.startService()
    try:
        await within(connection.when_connected())
        lost = defer.Deferred()
        connection.on_disconnected.append(lambda: lost.called or lost.callback(None))
        proxy.swallowing = True
        given_up = connection.command("PING").addTimeout(0.1, reactor)
        with pytest.raises(defer.TimeoutError):
            await given_up
        await within(lost)  # the 0.5 s no-reply timer ran out all the same
    finally:
        connection.stopService()
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_the_event_stores_health_check_fails_while_its_catch_up_connection_does_not_answer(
        stores, redis_url):
    upstream = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(upstream.host, upstream.port)
    port = proxy.start(reactor)
    queries = RedisConnection(RedisAddress.parse(f"redis://127.0.0.1:{port}/{upstream.db}"), "queries", 0.05, 0.2)
    queries.startService()
    try:
        store = stores(queries=queries)
        await within(queries.when_connected())
        await within(store.ping())
        proxy.swallowing = True  # catch-ups would hang; /healthz must say so
        with pytest.raises(defer.TimeoutError):
            await store.ping().addTimeout(1.0, reactor)
    finally:
        queries.stopService()
        await proxy.stop()
