"""CI smoke run of the benchmark harness (bench/, docs/performance.md): fan-out to 200
clients, eformws and the floor, a few broadcasts. It checks that the harness works end to
end (servers started and stopped, clients connected and authenticated, every message
delivered once, the JSON line complete); it asserts no timing. Needs nothing beyond the
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


@pytest.mark.slow  # ~4 s: the fan-out bench with 200 clients
def test_fanout_smoke(tmp_path):
    results = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "fanout", "--n", str(CLIENTS), "--broadcasts", str(BROADCASTS),
         "--servers", "eformws,floor", "--repeat", "1", "--settle", "0.2", "--out", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout
    line = json.loads(lines[0])
    assert results.read_text().strip() == lines[0]

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
