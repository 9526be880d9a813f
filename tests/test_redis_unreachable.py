"""A Redis that is not there when `twistd eformws` starts: one eformws warning per
connection when it cannot be reached and one when it is reached again, none of Twisted's
per-retry lines; `eformws status` shows the failing health checks."""

from __future__ import annotations

import re

import pytest_twisted
from processes import RedisServer, eformws, free_port, write_config

RETRIES = "[redis]\nreconnect_initial_delay = 0.05\nreconnect_max_delay = 0.2\n"


@pytest_twisted.ensureDeferred
async def test_redis_down_at_start_is_said_once_per_connection_and_again_when_it_is_back(tmp_path, spawn):
    redis = RedisServer(tmp_path, free_port())
    config = write_config(tmp_path, RETRIES)
    process = spawn.raw(["--config", str(config), "--port", "0", "--host", "127.0.0.1", "--redis", redis.url], tmp_path)
    await process.line(r"eformws listening on")  # after the start's wait for the event log (5 s of retries)
    down = process.out.decode()
    unreachable = re.findall(r"redis (.+?) cannot reach 127\.0\.0\.1:\d+; retrying", down)
    assert unreachable and len(unreachable) == len(set(unreachable)), down  # once per connection
    assert "Scheduling retry" not in down
    mark = len(process.out)
    await redis.start()
    try:
        for name in set(unreachable):
            await process.line(rf"redis {re.escape(name)} reached 127\.0\.0\.1:\d+ again", after=mark)
    finally:
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_status_shows_the_health_checks_when_redis_is_down(tmp_path, spawn):
    config = write_config(tmp_path, RETRIES)
    gateway = await spawn(["--config", str(config), "--port", "0", "--host", "127.0.0.1",
                           "--redis", f"redis://127.0.0.1:{free_port()}/0"], tmp_path)
    out, err, code = await eformws("status", "--url", gateway.http(""), cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^health\s+unavailable", out, re.M), out
    assert re.search(r"^\s+session_store\s+unavailable", out, re.M), out
