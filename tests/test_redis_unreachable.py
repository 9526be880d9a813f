"""A Redis that is not there when `twistd eformws` starts, or that goes away: one eformws
warning per connection and change of state (`cannot reach` at start, `connection lost`
when a working Redis goes, `reached` when it comes), none of Twisted's per-retry lines;
`eformws status` shows the failing health checks."""

from __future__ import annotations

import re
import signal

import pytest
import pytest_twisted
import treq
from conftest import REDIS_CONNECTIONS
from processes import RedisServer, eformws, free_port, write_config

RETRIES = "[redis]\nreconnect_initial_delay = 0.05\nreconnect_max_delay = 0.2\n"


async def pause(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest.mark.slow  # ~6 s: retries until Redis comes
@pytest_twisted.ensureDeferred
async def test_redis_down_at_start_is_said_once_per_connection_and_reached_without_again_when_it_comes(tmp_path, spawn):
    redis = RedisServer(tmp_path, free_port())
    config = write_config(tmp_path, RETRIES)
    process = spawn.raw(["--config", str(config), "--port", "0", "--host", "127.0.0.1", "--redis", redis.url], tmp_path)
    await process.line(r"eformws listening on")  # after the start's wait for the event log (5 s of retries)
    down = process.out.decode()
    unreachable = re.findall(r"redis (.+?) cannot reach 127\.0\.0\.1:\d+; retrying", down)
    assert unreachable and len(unreachable) == len(set(unreachable)), down  # once per connection
    assert "Scheduling retry" not in down
    mark = process.mark
    await redis.start()
    try:
        for name in set(unreachable):  # never connected before: "reached", not "reached ... again"
            await process.line(rf"redis {re.escape(name)} reached 127\.0\.0\.1:{redis.port}\n", after=mark)
        assert " again" not in process.out[mark:].decode(), process.log
    finally:
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_redis_lost_while_running_is_said_once_per_connection_and_reached_again_when_it_is_back(tmp_path, spawn):
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        config = write_config(tmp_path, RETRIES)
        gateway = await spawn(["--config", str(config), "--port", "0", "--host", "127.0.0.1", "--redis", redis.url],
                              tmp_path)
        for name in REDIS_CONNECTIONS:
            await gateway.process.line(rf"redis {name} connected to 127\.0\.0\.1:{redis.port}")
        mark = gateway.process.mark
        await redis.stop()
        for name in REDIS_CONNECTIONS:
            await gateway.process.line(rf"redis {name} connection lost \(127\.0\.0\.1:{redis.port}\); retrying with "
                                       r"backoff \(up to 0\.2 s apart\)", after=mark)
        await pause(1.0)  # reconnect attempts at most 0.2 s apart: several fail meanwhile
        await redis.start()
        for name in REDIS_CONNECTIONS:
            await gateway.process.line(rf"redis {name} reached 127\.0\.0\.1:{redis.port} again", after=mark)
        outage = gateway.process.out[mark:].decode()
        for name in REDIS_CONNECTIONS:
            assert len(re.findall(rf"redis {name} connection lost", outage)) == 1, outage
            assert len(re.findall(rf"redis {name} reached", outage)) == 1, outage
        assert "cannot reach" not in outage and "Scheduling retry" not in outage, outage
    finally:
        await redis.stop()


@pytest.mark.slow  # ~21 s: `eformws status` against a gateway whose Redis never answers
@pytest_twisted.ensureDeferred
async def test_status_shows_the_health_checks_when_redis_is_down(tmp_path, spawn):
    config = write_config(tmp_path, RETRIES)
    gateway = await spawn(["--config", str(config), "--port", "0", "--host", "127.0.0.1",
                           "--redis", f"redis://127.0.0.1:{free_port()}/0"], tmp_path)
    out, err, code = await eformws("status", "--url", gateway.http(""), cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^health\s+unavailable", out, re.M), out
    assert re.search(r"^\s+session_store\s+unavailable", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_healthz_names_each_store_unavailable_while_redis_was_never_reached(tmp_path, spawn):
    config = write_config(tmp_path, RETRIES)
    gateway = await spawn(["--config", str(config), "--port", "0", "--host", "127.0.0.1",
                           "--redis", f"redis://127.0.0.1:{free_port()}/0"], tmp_path)
    response = await treq.get(gateway.http("/healthz"), persistent=False)
    body = await response.json()
    assert response.code == 503
    # Both stores are asked at once, each for at most 2 s (a ping may wait for a first connection).
    assert body["checks"]["session_store"] in ("unavailable: redis lookups: not connected yet",
                                               "unavailable: no answer within 2 s")
    assert body["checks"]["event_store"] in ("unavailable: redis writes: not connected yet",
                                             "unavailable: no answer within 2 s")
    assert body["checks"]["redis_bus"].startswith("unavailable: redis unreachable")


@pytest_twisted.ensureDeferred
async def test_healthz_finds_a_hung_redis_that_still_holds_its_connections(tmp_path, start_server):
    redis = RedisServer(tmp_path)
    await redis.start()
    server = await start_server({"redis.url": redis.url, "redis.prefix": "hung:"})
    await server.service.bus.writer.when_connected()
    healthy = await treq.get(server.http("/healthz"), persistent=False)
    assert (healthy.code, (await healthy.json())["checks"]["redis_bus"]) == (200, "ok")
    redis.process.transport.signalProcess(signal.SIGSTOP)  # the sockets stay up; nothing answers
    try:
        response = await treq.get(server.http("/healthz"), persistent=False)
        body = await response.json()
        assert response.code == 503
        assert body["checks"]["redis_bus"] == "unavailable: no answer within 2 s"  # was "ok": connected, so healthy
    finally:
        redis.process.transport.signalProcess(signal.SIGCONT)
        await redis.stop()
