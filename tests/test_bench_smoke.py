"""CI smoke runs of the benchmark harness (bench/, docs/performance.md): fan-out to 200
clients, eformws and the floor, a few broadcasts; Node ws (bench/node/server.js) in a small
fan-out and connect run, and speaking the floor's protocol message for message; and the
WAMP scenarios on eformws alone (a few hundred calls and publications; Crossbar.io, which
the harness installs in a virtualenv of its own, is left out to keep CI fast). They check
that the harness works end to end (servers started and stopped, clients connected and
authenticated, every message delivered once, the JSON lines complete); they assert no
timing. Needs nothing beyond the test extra: the harness runs on the standard library,
Twisted and Autobahn (uvloop, the peer's python-socketio and matplotlib are only used when
the bench extra is installed); the Node ws tests need node and npm (the harness runs `npm
ci --prefix bench/node`), skipped where there is no node, a failure under scripts/test or
CI when node is there but `ws` could not be installed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import websockets
from conftest import aio

from bench import servers as S
from bench.pool import Http

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 200
BROADCASTS = 5

SERVER_KEYS = {
    "n", "connected", "connect_failures", "broadcasts", "http_errors", "expected", "delivered", "missing",
    "dups", "lost_connections", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "server_cpu_s",
    "elapsed_s", "server_rss_mib",
}


def bench(tmp_path, *args: str) -> tuple[list[dict], str]:
    """`python -m bench ARGS --out FILE`: (its JSON lines, each as appended to FILE; its output)."""
    results = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-m", "bench", *args, "--out", str(results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert results.read_text().splitlines() == lines
    return [json.loads(line) for line in lines], run.stdout


@pytest.mark.slow  # ~4 s: the fan-out bench with 200 clients
def test_fanout_smoke(tmp_path):
    lines, output = bench(tmp_path, "fanout", "--n", str(CLIENTS), "--broadcasts", str(BROADCASTS),
                          "--servers", "eformws,floor", "--repeat", "1", "--settle", "0.2")
    assert len(lines) == 1, output
    line = lines[0]

    assert line["scenario"] == "fanout"
    assert line["n"] == CLIENTS
    assert {"servers", "ratios", "targets", "machine", "versions", "at"} <= line.keys()
    assert set(line["servers"]) == {"eformws", "floor"}
    for name, server in line["servers"].items():
        assert SERVER_KEYS <= server.keys(), (name, sorted(SERVER_KEYS - server.keys()))
        assert server["connected"] == CLIENTS, (name, server)
        assert server["connect_failures"] == 0 and server["http_errors"] == 0, (name, server)
        assert server["expected"] == CLIENTS * BROADCASTS, (name, server)
        assert server["delivered"] == CLIENTS * BROADCASTS, (name, server)
        assert server["missing"] == 0 and server["dups"] == 0 and server["lost_connections"] == 0, (name, server)
        assert server["p50_ms"] is not None and server["p99_ms"] >= server["p50_ms"]
    assert {"p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_s"} <= line["ratios"]["eformws/floor"].keys()
    assert line["targets"]["every message delivered once"] is True


def node_ws() -> list[str]:
    """The command that runs Node ws (the harness installs its `ws` on first use), or a skip
    where there is no node or the install failed (a failure under scripts/test or CI, which
    install what the tests need)."""
    required = os.environ.get("CI") or os.environ.get("EFORMWS_TEST_REQUIRE_ALL")
    if shutil.which("node") is None:
        (pytest.fail if required else pytest.skip)("needs node (Node.js 20) for Node ws")
    command, found = S.ensure_node(log=lambda text: None)
    if command is None:
        (pytest.fail if required else pytest.skip)(f"Node ws is not available: {found}")
    return command


NODE_CLIENTS, NODE_BROADCASTS, NODE_REPLAY = 100, 3, 5


@pytest.mark.slow  # ~6 s (and `npm ci --prefix bench/node` on first use): eformws and Node ws, fanout then connect
def test_node_smoke(tmp_path):
    node_ws()
    lines, output = bench(tmp_path, "fanout", "connect", "--n", str(NODE_CLIENTS), "--broadcasts",
                          str(NODE_BROADCASTS), "--replay", str(NODE_REPLAY), "--servers", "eformws,node",
                          "--repeat", "1", "--settle", "0.2")
    assert [line["scenario"] for line in lines] == ["fanout", "connect"], output
    fanout, connect = lines
    for line in lines:
        assert set(line["servers"]) == {"eformws", "node"}, line
        assert line["node_versions"]["ws"] and line["node_versions"]["node"], line
        assert "unavailable" not in line, line
    for name, server in fanout["servers"].items():
        assert SERVER_KEYS <= server.keys(), (name, sorted(SERVER_KEYS - server.keys()))
        assert server["connected"] == NODE_CLIENTS and server["http_errors"] == 0, (name, server)
        assert server["delivered"] == server["expected"] == NODE_CLIENTS * NODE_BROADCASTS, (name, server)
        assert server["missing"] == 0 and server["dups"] == 0 and server["lost_connections"] == 0, (name, server)
    assert {"p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_s"} <= fanout["ratios"]["eformws/node"].keys()
    assert "eformws/floor" not in fanout["ratios"]
    for name, server in connect["servers"].items():  # ready = the greeting and NODE_REPLAY replayed events read
        assert server["connected"] == NODE_CLIENTS and server["failures"] == 0, (name, server)
        assert server["replay"] == NODE_REPLAY and server["rate_per_s"] > 0, (name, server)
    assert set(connect["ratios"]["eformws/node"]) == {"rate", "handshake_p99_ms"}


def normalized(text: str) -> str:
    """A message as sent (keys in order, spacing, escapes) with what differs from run to run
    (ids, timestamps) replaced by its kind."""
    text = re.sub(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"', '"<timestamp>"', text)
    text = re.sub(r'"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"', '"<uuid4>"', text)
    return text


async def transcript(server: S.Server) -> list:
    """What two clients and the trigger see of a run of joins, leaves, messages the server
    ignores and broadcasts (every broadcast's answer, every message each client reads)."""
    seen: list = []
    base = f"ws://127.0.0.1:{server.port}/ws/lockers"
    a = await websockets.connect(f"{base}?sessionId=anything", compression=None)
    b = await websockets.connect(base, compression=None)  # no sessionId: accepted too
    http = Http(server.port)

    async def read(who, client, count):
        for _ in range(count):
            seen.append([who, normalized(await asyncio.wait_for(client.recv(), 5))])

    async def post(body, path="/api/websocket/broadcast"):
        status, answer = await http.post(path, body)
        seen.append(["http", status,
                     normalized(json.dumps(answer)) if isinstance(answer, dict) else type(answer).__name__])

    try:
        await read("a", a, 2 + server.replay)  # connection, room_joined locker_updates, the replay
        await read("b", b, 2 + server.replay)
        await a.send(json.dumps({"type": "join_room", "data": {"room": "kiosk-1"}}))
        await read("a", a, 1)
        await b.send(json.dumps({"type": "join_room", "room": "kiosk-2", "data": {"room": "kiosk-1"}}))
        await read("b", b, 1)
        for ignored in ("not json", "[1]", "7", '{"type": "join_room", "data": [1]}',
                        '{"type": "join_room", "data": "kiosk-1"}', '{"type": "join_room", "data": {"room": 5}}',
                        '{"type": "join_room", "room": null, "data": {"room": "kiosk-3"}}',
                        '{"type": "hello", "room": "kiosk-3"}', '{"type": "join_room"}'):
            await a.send(ignored)
        await a.send(json.dumps({"type": "join_room", "data": {}, "room": "kiosk-1"}))  # again: answered again
        await a.send(json.dumps({"type": "join_room", "data": [], "room": "kiosk-4"}))  # `data or {}`: [] is {}
        await a.send(json.dumps({"type": "leave_room", "data": 0, "room": "kiosk-4"}))
        await read("a", a, 3)
        await a.send(json.dumps({"type": "leave_room", "data": {"room": "locker_updates"}}))
        await a.send(json.dumps({"type": "leave_room", "data": {"room": "never-joined"}}))
        await read("a", a, 2)
        await post({"namespace": "/ws/lockers", "event": "to_all", "data": {"t": 1.5, "i": 0, "x": "ü"}})
        await read("a", a, 1)
        await read("b", b, 1)
        for room in ("kiosk-1", "kiosk-2", "locker_updates", "nobody"):
            await post({"namespace": "/ws/lockers", "event": "to_room", "room": room, "data": {"room": room}})
        await read("a", a, 1)
        await read("b", b, 2)
        await post({"namespace": "/ws/lockers", "event": "to_all", "room": None, "data": [1, None, True]})
        for body in ({"namespace": "/ws/lockers", "data": {}}, {"event": "e", "data": {}}, [1],
                     {"namespace": "/ws/lockers", "event": "e", "data": {}, "room": ["kiosk-1"]}):
            await post(body)  # without event or namespace, or a room Python cannot look up: a 500
        await post({"namespace": "/ws/lockers", "event": "last", "data": {}}, "/api/websocket/broadcast/x?y=1")
        await read("a", a, 2)  # the two broadcasts to all, and nothing in between
        await read("b", b, 2)
    finally:
        http.close()
        await a.close()
        await b.close()
    return seen


@pytest.mark.slow  # ~2 s: the floor and Node ws started twice each (with and without replay), two clients each
@pytest_twisted.ensureDeferred
async def test_node_speaks_the_floors_protocol(tmp_path):
    command = node_ws()

    async def both(replay):
        floor = await S.start_floor(tmp_path, replay=replay)
        try:
            of_floor = await transcript(floor)
        finally:
            floor.stop()
        node = await S.start_node(tmp_path, command, replay=replay)
        try:
            of_node = await transcript(node)
        finally:
            node.stop()
        return of_floor, of_node

    for replay in (0, 3):
        of_floor, of_node = await aio(both(replay))
        assert of_node == of_floor
        assert ["http", 200, '{"success": true, "delivered": 2, "timestamp": "<timestamp>"}'] in of_floor
        assert of_floor.count(["http", 500, "bytes"]) == 4, of_floor


CALLS, CALLERS, SUBSCRIBERS, PUBLICATIONS = 100, 5, 10, 30


@pytest.mark.slow  # ~6 s: eformws started once, then a few hundred WAMP calls and events
def test_wamp_smoke(tmp_path):
    lines, output = bench(tmp_path, "wamp", "--servers", "eformws", "--wamp-repeat", "1", "--wamp-seconds", "5",
                          "--wamp-callers", f"1,{CALLERS}", "--wamp-max-calls", str(CALLS),
                          "--wamp-subscribers", str(SUBSCRIBERS), "--wamp-max-publications", str(PUBLICATIONS))
    assert [(line["scenario"], line["n"]) for line in lines] == [
        ("wamp_rpc", 1), ("wamp_rpc", CALLERS), ("wamp_pubsub", SUBSCRIBERS)], output
    for line in lines:
        assert {"servers", "ratios", "targets", "machine", "versions", "at", "unavailable"} <= line.keys()
        assert set(line["servers"]) == {"eformws"} and line["unavailable"] == {}
        assert line["ratios"] == {}
        assert all(ok is None for name, ok in line["targets"].items() if "crossbar" in name), line["targets"]
        server = line["servers"]["eformws"]
        assert server["server_cpu_s"] >= 0 and server["lost"] == 0, server
        assert server["p50_ms"] is not None and server["p99_ms"] >= server["p50_ms"], server
    for line in lines[:2]:
        server = line["servers"]["eformws"]
        assert server["calls"] == CALLS * line["n"], server  # each caller stops at --wamp-max-calls
        assert server["errors"] == 0 and server["unanswered"] == 0, server
        assert server["cpu_us_per_call"] is not None and server["calls_per_s"] > 0, server
        assert line["targets"]["every call answered"] is True
    server = lines[2]["servers"]["eformws"]
    assert server["publications"] == server["acknowledged"] == PUBLICATIONS, server
    assert server["delivered"] == server["expected"] == PUBLICATIONS * SUBSCRIBERS, server
    assert server["missing"] == 0 and server["dups"] == 0 and server["errors"] == 0, server
    assert server["cpu_us_per_event"] is not None and server["events_per_s"] > 0, server
    assert lines[2]["targets"]["every event delivered once"] is True
    assert "| eformws |" in output  # the table printed after the JSON lines
