"""Catch-up at the client's pace: a client tens of thousands of events behind gets every one
of them, in order, however slowly it reads, with a slow-consumer bound far smaller than
what it missed; the Python client's cursor moves with each event, so a cut half-way loses
nothing and repeats nothing."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_twisted
import websockets
from conftest import aio, locker
from twisted.internet import defer, reactor

from eformws.client import EformClient
from proxy import FaultyProxy

LOCKERS = "/ws/lockers"
LIMIT = 64 * 1024  # the slow-consumer bound: what a client misses below is hundreds of times more


REASON = "r" * 300  # pads an event to about 500 bytes on the wire


async def seed(server, count: int) -> list[str]:
    """`count` events in the log (about 500 bytes each on the wire); their seqs."""
    emitted = []
    for start in range(0, count, 5000):
        batch = [server.service.events.emit("locker_state_changed", locker(n, kiosk="k1", reason=REASON)) for n in range(start, min(count, start + 5000))]
        emitted += await defer.gatherResults(batch, consumeErrors=True)
    return [envelope["seq"] for envelope in emitted]


async def read_slowly(url: str, first_event: asyncio.Event | None = None) -> tuple[list[dict], dict]:
    """Connect and read like a slow device: a pause after every 2,000 messages, and no more
    than 4 messages queued unread (the socket is not read meanwhile). Fires with the
    events and the `resumed` answer; sets `first_event` once the first event came."""
    events = []
    async with websockets.connect(url, max_queue=4, max_size=None) as connection:
        read = 0
        async for raw in connection:
            message = json.loads(raw)
            read += 1
            if read % 2000 == 0:
                await asyncio.sleep(0.05)
            if message["type"] == "resumed":
                return events, message["data"]
            if "seq" in message:
                events.append(message)
                if first_event is not None:
                    first_event.set()
    raise AssertionError("closed before resumed")


async def behind(start_server, count: int):
    """A server with `count` events stored and a slow bound; (server, their seqs, the URL
    of a staff connection resuming from before them)."""
    server = await start_server({"websocket.max_unsent_bytes": LIMIT})
    seqs = await seed(server, count)
    session_id = await server.session(role="staff")
    return server, seqs, server.url(f"{LOCKERS}?sessionId={session_id}&since=0&epoch={server.hub.position.epoch}")


@pytest.mark.slow  # ~27 s: 50,000 events stored, then read slowly
@pytest_twisted.ensureDeferred
async def test_a_client_50000_events_behind_reading_slowly_gets_every_one_in_order(start_server):
    server, seqs, url = await behind(start_server, 50_000)
    events, resumed = await aio(read_slowly(url))
    assert [e["seq"] for e in events] == seqs
    assert resumed == {"recovered": True, "count": 50_000, "seq": seqs[-1], "epoch": server.hub.position.epoch}


@pytest.mark.slow  # ~7 s: a long catch-up
@pytest_twisted.ensureDeferred
async def test_events_emitted_during_a_long_catch_up_follow_it_in_order(start_server):
    server, seqs, url = await behind(start_server, 20_000)
    first_event = asyncio.Event()
    reading = aio(read_slowly(url, first_event))
    await aio(first_event.wait())  # the catch-up is under way
    live = [(await server.service.events.emit("locker_state_changed", locker(n, kiosk="k1", reason=REASON)))["seq"] for n in range(5)]
    events, resumed = await reading
    assert [e["seq"] for e in events] == seqs + live
    assert (resumed["recovered"], resumed["seq"]) == (True, live[-1])


@pytest_twisted.ensureDeferred
async def test_a_replay_of_many_events_reaches_a_slow_reader_whole(start_server):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT, "events.replay_limit": 5000})
    seqs = await seed(server, 5000)
    session_id = await server.session(role="staff")

    async def replayed():
        received = []
        async with websockets.connect(server.url(f"{LOCKERS}?sessionId={session_id}"), max_queue=4) as connection:
            while len(received) < len(seqs):
                message = json.loads(await asyncio.wait_for(connection.recv(), 10))
                if "seq" in message:
                    received.append(message["seq"])
                    if len(received) % 1000 == 0:
                        await asyncio.sleep(0.05)
        return received

    assert await aio(replayed()) == seqs


@pytest.mark.slow  # ~7 and ~17 s: a long catch-up, cut and resumed
@pytest.mark.parametrize("rooms", [(), ("k1",)], ids=["default-room", "with-a-kiosk-room"])
@pytest_twisted.ensureDeferred
async def test_the_python_client_cut_half_way_through_a_catch_up_resumes_from_the_last_event_it_got(start_server,
                                                                                                     rooms):
    server = await start_server({"websocket.max_unsent_bytes": LIMIT})
    seqs = await seed(server, 20_000)
    epoch = server.hub.position.epoch
    session_id = await server.session(role="staff")
    proxy = FaultyProxy("127.0.0.1", server.port)
    port = proxy.start(reactor)
    client = EformClient(f"http://127.0.0.1:{port}", LOCKERS, session_id, rooms=rooms, since="0", epoch=epoch,
                         initial_delay=0.01, max_delay=0.05)
    got: list[str] = []
    cursors_at_cut: list = []
    done = defer.Deferred()

    def on_event(envelope):
        got.append(envelope["seq"])
        if len(got) == 5000:
            proxy.cut()  # the network fails half-way through the catch-up
        if len(got) == len(seqs):
            done.callback(None)

    client.on("*", on_event)
    client.on_disconnect(lambda disconnect: cursors_at_cut.append(client.last_seq))
    client.connect()
    try:
        await done.addTimeout(60, reactor)
    finally:
        await client.close()
        await proxy.stop()
    assert got == seqs  # every one, once, in order
    assert cursors_at_cut and int(cursors_at_cut[0]) >= 5000  # the cursor had moved with the events
