"""CI smoke runs of the benchmark harness (bench/, docs/performance.md): fan-out to 200
clients, eformws and the floor, a few broadcasts; and the WAMP scenarios on eformws alone
(a few hundred calls and publications; Crossbar.io, which the harness installs in a
virtualenv of its own, is left out to keep CI fast). They check that the harness works end
to end (servers started and stopped, clients connected and authenticated, every message
delivered once, the JSON lines complete); they assert no timing. Needs nothing beyond the
test extra: the harness runs on the standard library, Twisted and Autobahn (uvloop, the
peer's python-socketio and matplotlib are only used when the bench extra is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
