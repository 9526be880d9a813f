"""`GET /metrics` (Prometheus text exposition): the names, and that each figure moves when
what it counts happens, as a scraper would see it."""

from __future__ import annotations

import pytest_twisted
import treq
from conftest import REDIS_CONNECTIONS, locker, until_pong
from prometheus_client.parser import text_string_to_metric_families

LOCKERS = "/ws/lockers"
LOCKER = locker(1)


async def scrape(server) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    response = await treq.get(server.http("/metrics"), persistent=False)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = (await response.content()).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_twisted.ensureDeferred
async def test_metric_names_follow_prometheus_conventions(server):
    samples = await scrape(server)
    names = {name for name, _ in samples}
    assert {"eformws_connections", "eformws_rooms", "eformws_delivery_latency_seconds_count",
            "eformws_ping_rtt_seconds_count", "eformws_messages_sent_total", "eformws_replays_total"} <= names
    assert all(name.startswith("eformws_") for name in names if not name.startswith(("python_", "process_")))


@pytest_twisted.ensureDeferred
async def test_connections_gauge_counts_each_namespace_and_transport(server):
    session_id = await server.session()
    clients = [await server.join(LOCKERS, session_id) for _ in range(3)]
    samples = await scrape(server)
    assert value(samples, "eformws_connections", namespace=LOCKERS, transport="websocket") == 3
    assert value(samples, "eformws_connections", namespace="/wamp", transport="wamp") == 0
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_broadcast_moves_messages_sent_and_the_delivery_latency_histogram(server):
    client = await server.join(LOCKERS, await server.session())
    before = await scrape(server)
    await server.service.events.broadcast(LOCKERS, "notice", {})
    await client.recv()
    after = await scrape(server)
    assert value(after, "eformws_messages_sent_total") - value(before, "eformws_messages_sent_total") == 1
    assert (value(after, "eformws_delivery_latency_seconds_count")
            - value(before, "eformws_delivery_latency_seconds_count")) == 1


@pytest_twisted.ensureDeferred
async def test_client_messages_are_counted_by_transport(server):
    client = await server.join(LOCKERS, await server.session())
    before = await scrape(server)
    await client.send({"type": "ping", "data": {}})
    await client.recv()
    after = await scrape(server)
    name = "eformws_messages_received_total"
    assert value(after, name, transport="websocket") - value(before, name, transport="websocket") == 1


@pytest_twisted.ensureDeferred
async def test_refused_sessions_are_counted_by_reason(server):
    before = await scrape(server)
    client = await server.connect(f"{LOCKERS}?sessionId=forged")
    await client.closed()
    client = await server.connect(LOCKERS)
    await client.closed()
    after = await scrape(server)
    name = "eformws_auth_failures_total"
    for reason in ("invalid", "missing"):
        assert (value(after, name, transport="websocket", reason=reason)
                - value(before, name, transport="websocket", reason=reason)) == 1


@pytest_twisted.ensureDeferred
async def test_resumes_are_counted_by_whether_they_recovered(server):
    stored = await server.service.events.emit("locker_state_changed", LOCKER)
    before = await scrape(server)
    session_id = await server.session()
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since={stored['seq']}")
    while (await client.recv())["type"] != "resumed":
        pass
    after = await scrape(server)
    name = "eformws_resumes_total"
    assert value(after, name, recovered="true") - value(before, name, recovered="true") == 1


@pytest_twisted.ensureDeferred
async def test_emitted_events_are_counted_by_type_with_the_store_latency(server):
    before = await scrape(server)
    await server.service.events.emit("locker_state_changed", LOCKER)
    after = await scrape(server)
    assert (value(after, "eformws_events_emitted_total", type="locker_state_changed")
            - value(before, "eformws_events_emitted_total", type="locker_state_changed")) == 1
    name = "eformws_store_latency_seconds_count"
    assert (value(after, name, store="event_store", operation="append")
            - value(before, name, store="event_store", operation="append")) == 1


@pytest_twisted.ensureDeferred
async def test_without_redis_there_is_no_redis_gauge(server):
    samples = await scrape(server)
    assert not any(name == "eformws_redis_up" for name, _ in samples)


@pytest_twisted.ensureDeferred
async def test_metrics_can_be_turned_off(start_server):
    server = await start_server({"metrics.enabled": False})
    response = await treq.get(server.http("/metrics"), persistent=False)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_refused_http_credentials_are_counted_by_reason(server):
    before = await scrape(server)
    body = b'{"namespace":"/ws/lockers","event":"x","data":{}}'
    kiosk = await server.session(role="kiosk", kiosk="kiosk-1")
    for headers in ({}, {b"Authorization": [b"Bearer forged"]}, {b"Authorization": [f"Bearer {kiosk}".encode()]}):
        response = await treq.post(server.http("/api/websocket/broadcast"), data=body, headers=headers, persistent=False)
        await response.content()
    after = await scrape(server)
    name = "eformws_auth_failures_total"
    for reason in ("missing", "invalid", "forbidden"):
        assert (value(after, name, transport="http", reason=reason)
                - value(before, name, transport="http", reason=reason)) == 1


async def scrape_until(server, condition, attempts=100):
    """Scrape again, a heartbeat apart, until `condition(samples)` holds (for figures that
    move on the server's own timers, like its pings)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(attempts):
        samples = await scrape(server)
        if condition(samples):
            return samples
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("the metric never moved")


@pytest_twisted.ensureDeferred
async def test_ping_round_trips_are_observed(start_server):
    server = await start_server({"websocket.ping_interval": 0.1})
    before = value(await scrape(server), "eformws_ping_rtt_seconds_count")
    await server.join(LOCKERS, await server.session())
    await scrape_until(server, lambda s: value(s, "eformws_ping_rtt_seconds_count") > before)


@pytest_twisted.ensureDeferred
async def test_replays_on_connect_are_counted(server):
    await server.service.events.emit("locker_state_changed", LOCKER)
    before = value(await scrape(server), "eformws_replays_total")
    client = await server.join(LOCKERS, await server.session())
    await client.recv()  # the replayed event
    assert value(await scrape(server), "eformws_replays_total") - before == 1


@pytest_twisted.ensureDeferred
async def test_rooms_gauge_counts_rooms_in_use(server):
    client = await server.join(LOCKERS, await server.session())
    await client.send({"type": "join_room", "data": {"room": "kiosk-9"}})
    await client.recv()
    assert value(await scrape(server), "eformws_rooms", namespace=LOCKERS) == 2  # locker_updates, kiosk-9


@pytest_twisted.ensureDeferred
async def test_session_expiry_closes_are_counted(start_server):
    server = await start_server({"sessions.recheck_interval": 0.1})
    before = value(await scrape(server), "eformws_session_expiry_closes_total")
    client = await server.join(LOCKERS, await server.session(ttl=0.3))
    await client.closed(timeout=5)
    assert value(await scrape(server), "eformws_session_expiry_closes_total") - before == 1


@pytest_twisted.ensureDeferred
async def test_each_redis_connection_reports_its_state(start_server, redis_url, redis_prefix):
    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix})
    samples = await scrape_until(
        server, lambda s: all(value(s, "eformws_redis_up", connection=name) == 1 for name in REDIS_CONNECTIONS)
    )
    assert {dict(labels)["connection"] for name, labels in samples if name == "eformws_redis_up"} == set(REDIS_CONNECTIONS)


@pytest_twisted.ensureDeferred
async def test_an_event_for_a_client_in_two_of_its_rooms_counts_one_message_sent(server):
    client = await server.join(LOCKERS, await server.session(), rooms=["kiosk-1"])
    before = await scrape(server)
    stored = await server.service.events.emit("locker_state_changed", locker(kiosk="kiosk-1"))
    assert await until_pong(client) == [stored]
    after = await scrape(server)
    assert value(after, "eformws_messages_sent_total") - value(before, "eformws_messages_sent_total") == 1
