"""The Redis bus on its own (eformws/bus/redis.py; docs/operations.md, "Delivery across
processes" and "When Redis is unreachable"): two RedisBus instances on one key prefix are two
processes. A broadcast reaches the publisher's hub at once and every other process once, in
the order it was published; while Redis is unreachable publish still answers at once, the
bus says it is unhealthy and keeps what it could not write (up to its buffer), and delivery
resumes once Redis is back."""

from __future__ import annotations

import pytest
import pytest_twisted
from conftest import Awaited
from processes import RedisServer
from proxy import FaultyProxy
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from eformws.backends.redis import RedisAddress, RedisConnection
from eformws.bus.redis import RedisBus
from eformws.core.message import Message, Target

TIMEOUT = 10.0


def within(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


def message(n) -> Message:
    return Message({"type": "n", "data": {"n": n}}, (Target("/ws/lockers"),))


class Hub(Awaited):
    """What a process's hub gets from its bus, in order (one recipient per message)."""

    def __init__(self):
        super().__init__()
        self.got: list = []

    def __call__(self, message: Message) -> int:
        self.got.append(message.envelope["data"]["n"])
        self.wake()
        return 1

    def signal(self, payload: dict) -> None:
        """A signal (IBus.signal), kept in order with the messages as ("signal", x, sender)."""
        self.got.append(("signal", payload["x"], payload["from"]))
        self.wake()

    def has(self, n, seconds: float = TIMEOUT) -> defer.Deferred:
        """Fires once the message numbered `n` has come."""
        return self.until(lambda: n in self.got, seconds)


class Process:
    """A RedisBus with its hub, as one gateway process has them."""

    def __init__(self, url: str, prefix: str, node: str, **options):
        options = {"initial_delay": 0.05, "max_delay": 0.2, "block_ms": 200, **options}
        self.bus = RedisBus(RedisAddress.parse(url), prefix, node, options.pop("buffer_size", 1000),
                            options.pop("stream_length", 10_000), **options)
        self.hub = Hub()

    async def start(self) -> "Process":
        self.bus.start(self.hub, self.hub.signal)
        self.bus.startService()
        await within(self.bus.writer.when_connected())
        await within(self.bus.reader.when_connected())
        return self

    def publish(self, n) -> defer.Deferred:
        return self.bus.publish(message(n))

    def lost(self) -> defer.Deferred:
        """Fires once both of the bus's connections to Redis are gone."""
        return within(defer.gatherResults([_next_loss(self.bus.writer), _next_loss(self.bus.reader)]))

    def back(self) -> defer.Deferred:
        """Fires once both of the bus's connections to Redis are made again."""
        return within(defer.gatherResults([self.bus.writer.when_connected(), self.bus.reader.when_connected()]))


def _next_loss(connection: RedisConnection) -> defer.Deferred:
    d = defer.Deferred()

    def lost():
        connection.on_disconnected.remove(lost)
        d.callback(None)

    connection.on_disconnected.append(lost)
    return d


@pytest.fixture
def processes(redis_prefix):
    """`await processes(url, node, **options)`: a started Process on `redis_prefix`."""
    started: list[Process] = []

    async def start(url: str, node: str, **options) -> Process:
        process = Process(url, redis_prefix, node, **options)
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        if process.bus.running:
            pytest_twisted.blockon(defer.maybeDeferred(process.bus.stopService))


async def pair(processes, url: str, **options) -> tuple[Process, Process]:
    return await processes(url, "process-a", **options), await processes(url, "process-b", **options)


async def settled(sender: Process, receivers: list[Process], n, seconds: float = TIMEOUT) -> None:
    """Publish `n` from `sender` and wait until every one of `receivers` has it: whatever
    `sender` published before it has then been read (a bus delivers one publisher in order)."""
    sender.publish(n)
    for receiver in receivers:
        await receiver.hub.has(n, seconds)


async def written(process: Process, deadline: float = TIMEOUT) -> None:
    """Wait until the bus has written everything it kept (no event says so: polled)."""
    give_up = reactor.seconds() + deadline
    while process.bus.pending:
        assert reactor.seconds() < give_up, f"{len(process.bus.pending)} broadcasts still unwritten"
        await deferLater(reactor, 0.01, lambda: None)


# -- delivery -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_broadcast_is_delivered_once_to_the_publishers_hub_and_once_to_the_other_process(processes, redis_url):
    a, b = await pair(processes, redis_url)
    count = await a.publish(0)
    assert count == 1 and a.hub.got == [0]  # the publisher's own hub: at once, from publish
    await b.hub.has(0)
    await settled(b, [a], "end")  # a has read past its own entry in the stream
    assert a.hub.got == [0, "end"]
    assert b.hub.got == [0, "end"]


@pytest_twisted.ensureDeferred
async def test_a_signal_reaches_its_addressee_alone_in_order_with_the_senders_broadcasts(processes, redis_url):
    a, b = await pair(processes, redis_url)
    c = await processes(redis_url, "process-c")
    a.publish(0)
    a.bus.signal({"x": "to b", "bytes": b"\x00\xff"}, "process-b")
    a.publish(1)
    a.bus.signal({"x": "to all"})
    await settled(a, [b, c], "end")
    assert b.hub.got == [0, ("signal", "to b", "process-a"), 1, ("signal", "to all", "process-a"), "end"]
    assert c.hub.got == [0, 1, ("signal", "to all", "process-a"), "end"]
    assert a.hub.got == [0, 1, "end"]  # a process never signals itself


@pytest_twisted.ensureDeferred
async def test_a_signal_the_bus_cannot_carry_is_refused_before_anything_is_queued(processes, redis_url):
    a, _ = await pair(processes, redis_url)
    with pytest.raises(ValueError):
        a.bus.signal({"x": object()}, "process-b")
    assert not a.bus.pending


@pytest_twisted.ensureDeferred
async def test_a_burst_of_500_broadcasts_reaches_the_other_process_once_in_publish_order(processes, redis_url):
    a, b = await pair(processes, redis_url)
    for n in range(500):
        a.publish(n)
    await b.hub.until(lambda: len(b.hub.got) >= 500)
    await settled(a, [b], "end")
    assert b.hub.got == [*range(500), "end"]
    assert a.hub.got == [*range(500), "end"]


@pytest_twisted.ensureDeferred
async def test_bursts_from_two_processes_reach_every_process_in_each_publishers_order(processes, redis_url):
    a, b = await pair(processes, redis_url)
    c = await processes(redis_url, "process-c")
    for n in range(300):
        a.publish(["a", n])  # lists: what comes back from JSON
        b.publish(["b", n])
    await settled(a, [b, c], ["a", "end"])
    await settled(b, [a, c], ["b", "end"])
    for hub in (a.hub, b.hub, c.hub):
        for producer in ("a", "b"):
            assert [n for p, n in hub.got if p == producer] == [*range(300), "end"]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_whose_write_answer_was_lost_is_delivered_once_to_the_other_process(processes, redis_url):
    upstream = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(upstream.host, upstream.port)
    port = proxy.start(reactor)
    try:
        b = await processes(redis_url, "process-b")
        a = await processes(f"redis://127.0.0.1:{port}/{upstream.db}", "process-a")
        proxy.swallowing = True  # Redis writes the entry; its answer never comes back
        a.publish(0)
        await b.hub.has(0)
        proxy.swallowing = False
        proxy.cut()  # a's writer reconnects and writes what it kept again: a second entry
        await a.back()
        await settled(a, [b], "end")
        length = await b.bus.writer.command("XLEN", b.bus.key)
        assert int(length) == 3, "the entry was not written twice: nothing was deduplicated"
        assert b.hub.got == [0, "end"]
        assert a.hub.got == [0, "end"]
    finally:
        await proxy.stop()


# -- an outage --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publish_during_an_outage_answers_the_local_recipient_count_at_once(processes, own_redis):
    a, b = await pair(processes, own_redis.url)
    lost = a.lost()
    await own_redis.stop()
    await lost
    d = a.publish(0)
    assert d.called, "publish waited for Redis"
    assert await d == 1
    assert a.hub.got == [0]  # delivered to the publisher's own clients meanwhile
    assert b.hub.got == []


@pytest_twisted.ensureDeferred
async def test_the_bus_says_it_is_unhealthy_while_redis_is_unreachable_and_healthy_once_it_is_back(processes, own_redis):
    a = await processes(own_redis.url, "process-a")
    assert a.bus.healthy is True
    lost = a.lost()
    await own_redis.stop()
    await lost
    assert a.bus.healthy is False
    await own_redis.start()
    await a.back()
    assert a.bus.healthy is True


@pytest_twisted.ensureDeferred
async def test_broadcasts_published_during_an_outage_reach_the_other_process_once_in_order_when_redis_is_back(
        processes, own_redis):
    a, b = await pair(processes, own_redis.url)
    await settled(a, [b], "before")
    lost = defer.gatherResults([a.lost(), b.lost()])
    await own_redis.stop()
    await lost
    for n in range(5):
        a.publish(n)
    assert a.hub.got == ["before", 0, 1, 2, 3, 4] and b.hub.got == ["before"]
    await own_redis.start()
    await b.hub.until(lambda: len(b.hub.got) >= 6)
    await settled(a, [b], "after")
    assert b.hub.got == ["before", 0, 1, 2, 3, 4, "after"]
    await settled(b, [a], "end")
    assert a.hub.got == ["before", 0, 1, 2, 3, 4, "after", "end"]


@pytest_twisted.ensureDeferred
async def test_past_the_outage_buffer_the_other_process_misses_the_oldest_broadcasts(processes, own_redis):
    a, b = await pair(processes, own_redis.url, buffer_size=3)
    lost = a.lost()
    await own_redis.stop()
    await lost
    for n in range(5):
        a.publish(n)
    assert a.hub.got == [0, 1, 2, 3, 4] and a.bus.dropped == 2
    await own_redis.start()
    await b.hub.until(lambda: len(b.hub.got) >= 3)  # entries are read in the order written
    assert b.hub.got == [2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_published_while_a_full_outage_buffer_is_being_written_reaches_the_other_process(
        processes, own_redis):
    a, b = await pair(processes, own_redis.url, buffer_size=3)
    lost = a.lost()
    await own_redis.stop()
    await lost
    for n in range(3):  # the buffer is full
        a.publish(n)
    # Redis back: the bus writes its buffer on connecting; this publish comes while it does.
    a.bus.writer.on_connected.append(lambda _: a.publish(3))
    await own_redis.start()
    await b.hub.until(lambda: len(b.hub.got) >= 3)
    await written(a)
    await settled(a, [b], "end")
    assert a.hub.got == [0, 1, 2, 3, "end"]
    assert b.hub.got == [0, 1, 2, 3, "end"]  # nothing was dropped unwritten: every one arrives


@pytest_twisted.ensureDeferred
async def test_broadcasts_reach_the_other_process_after_redis_restarts_and_loads_its_data(processes, tmp_path):
    # Debian's persistence (an RDB snapshot saved at shutdown), loaded slowly enough that the
    # buses reconnect while Redis still answers LOADING.
    redis = RedisServer(tmp_path, snapshots_only=True)
    redis.persistence += ["--key-load-delay", "20", "--loading-process-events-interval-bytes", "1024"]
    await redis.start()
    try:
        a, b = await pair(processes, redis.url)
        await a.bus.writer.command("EVAL", "for i = 1, 40000 do redis.call('SET', 'filler:' .. i, 'x') end", 0)
        lost = defer.gatherResults([a.lost(), b.lost()])
        await redis.stop()  # saves the snapshot
        await lost
        await redis.start()  # once the data is loaded
        await a.back()
        await b.back()
        await settled(a, [b], 0, seconds=5.0)  # milliseconds when the bus reads
        assert b.hub.got == [0]
    finally:
        await redis.stop("KILL")


# -- a dead link ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_bus_reader_whose_replies_stop_coming_reconnects_and_reads_what_was_published_meanwhile(
        processes, redis_url, monkeypatch):
    # A connection cut without FIN or RST looks up for ever; the reader's XREAD must not wait for ever.
    monkeypatch.setattr("eformws.backends.redis.READ_MARGIN", 0.3)
    upstream = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(upstream.host, upstream.port)
    port = proxy.start(reactor)
    try:
        sender = await processes(redis_url, "process-a")
        receiver = await processes(f"redis://127.0.0.1:{port}/{upstream.db}", "process-b", block_ms=100)
        await settled(sender, [receiver], 0)
        lost = within(_next_loss(receiver.bus.reader))
        proxy.swallowing = True  # Redis's answers no longer come back
        sender.publish(1)  # its XREAD answer is swallowed
        await lost
        proxy.swallowing = False
        await settled(sender, [receiver], 2)
        assert receiver.hub.got == [0, 1, 2]
    finally:
        await proxy.stop()
