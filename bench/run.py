"""`python -m bench SCENARIO... [options]`: run scenarios against eformws, the floor, Node ws
and the peer (WAMP: eformws and Crossbar.io, bench/wamp.py), each started here on a free
loopback port; print one JSON line per scenario (and per N) with every server's figures and
the ratios eformws/floor (and eformws/node, eformws/peer, eformws/crossbar), and append it to
the results file.

    python -m bench all                 # every scenario at the issue's sizes, then the report
    python -m bench all --quick         # the same at small sizes (minutes, for checking)
    python -m bench fanout --n 200 --broadcasts 5 --repeat 1 --servers eformws,floor   # what CI runs
    python -m bench fanout connect idle --servers eformws,floor,node   # against Node.js + ws (npm ci on first use)
    python -m bench wamp                # WAMP RPC and pub/sub: eformws and Crossbar.io (installed on first use)
    python -m bench report              # docs/performance.md table and plot from the results

Latency method, the same for every server: the orchestrator (the process that triggers a
broadcast) puts `data.t = time.time()` (and `data.i`, the message index) in the body of
`POST /api/websocket/broadcast`, immediately before sending it; a client records its
receive time minus `t`. `emit` puts them in `data.metadata` (the only free-form place an
event has), set by the process that calls emit (eformws's emit host, or the floor itself).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers as S
from bench.pool import Http, Pool

NAMESPACE = "/ws/lockers"
HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results.jsonl"

FULL = {
    "fanout": [1000, 5000, 10000], "fanout_repeat": 3,
    "rooms": 10000, "room_count": 500,
    "connect": 5000,
    "idle": 5000,
    "emit_subscribers": 1000, "emit_rate": 5000, "emit_seconds": 10,
    "workers": 10000,
    "wamp_seconds": 10, "wamp_repeat": 3,
    "emit_http_events": 100000,
}
QUICK = {
    "fanout": [200, 500, 1000], "fanout_repeat": 1,
    "rooms": 1000, "room_count": 50,
    "connect": 500,
    "idle": 500,
    "emit_subscribers": 100, "emit_rate": 1000, "emit_seconds": 3,
    "workers": 1000,
    "wamp_seconds": 3, "wamp_repeat": 1,
    "emit_http_events": 5000,
}


# the servers of each scenario, taking turns in this order (`--servers` picks some, in its own order)
SERVERS = {
    "fanout": ["eformws", "floor", "node", "peer"],
    "rooms": ["eformws", "floor", "node", "peer"],
    "connect": ["eformws", "floor", "node", "peer"],
    "idle": ["eformws", "floor", "node", "peer"],
    "emit": ["eformws", "floor"],
    "workers": ["eformws", "floor"],
}
# the ratios eformws/<server> of each scenario (`compare`): ratio's name -> the figure divided
LATENCY = {k: k for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_s")}
RATIOS = {
    "fanout": LATENCY, "rooms": LATENCY, "workers": LATENCY,
    "connect": {"rate": "rate_per_s", "handshake_p99_ms": "handshake_p99_ms"},
    "idle": {"kib_per_connection": "kib_per_connection"},
    "emit": {"rate": "stored_per_s", "p99_ms": "p99_ms"},
}


def log(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of a sorted list (None when empty)."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)], 3)


def latency(ordered: list[float]) -> dict:
    return {
        "p50_ms": percentile(ordered, 50), "p95_ms": percentile(ordered, 95), "p99_ms": percentile(ordered, 99),
        "max_ms": round(ordered[-1], 3) if ordered else None,
        "mean_ms": round(sum(ordered) / len(ordered), 3) if ordered else None,
    }


SUMMED = ("broadcasts", "http_errors", "expected", "delivered", "missing", "dups", "lost_connections",
          "connect_failures")
MEDIAN = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "server_cpu_s", "elapsed_s", "server_rss_mib",
          "generators_cpu_s", "wire_bytes_per_message")


def merge_runs(runs: list[dict], summed=SUMMED, median=MEDIAN,
               kept=("p50_ms", "p99_ms", "max_ms", "server_cpu_s")) -> dict:
    """One server's runs of a scenario: medians of the figures, sums of the counts, and
    the `kept` figures of each run in `runs`."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key in summed:
        out[key] = sum(r[key] for r in runs)
    for key in median:
        values = sorted(r[key] for r in runs if r.get(key) is not None)
        out[key] = values[len(values) // 2] if values else None
    out["runs"] = [{k: r.get(k) for k in kept} for r in runs]
    return out


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in ("twisted", "autobahn", "socketio", "engineio", "aiohttp", "uvloop"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", None) or _dist_version(name)
        except Exception:
            pass
    return out


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (name, f"python-{name}"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


class Profiler:
    """py-spy record against a server pid during one phase (raw collapsed stacks), or nothing."""

    def __init__(self, directory: Path | None, name: str, pid: int, rate: int = 250):
        self.proc = None
        self.path = None
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.txt"
        spy = S.BIN / "py-spy"
        self.proc = subprocess.Popen([str(spy), "record", "-p", str(pid), "-r", str(rate), "--format", "raw",
                                      "-o", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        from bench.profile import summarize

        return summarize(self.path)


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="eformws-bench-"))
        self.started: list[S.Server] = []
        self.unavailable: dict[str, str] = {}  # server -> why it was not run
        self.node: list[str] | None = None  # the command that runs bench/node/server.js
        self.node_versions: dict | None = None

    # -- plumbing ---------------------------------------------------------------------

    async def server(self, kind: str, *, n: int, replay: int = 0, redis_url: str = "", workers: int = 1,
                     emit_host: bool = False, extra: tuple[str, ...] = ()) -> S.Server:
        backlog = self.args.backlog
        if kind == "eformws":
            server = await S.start_eformws(self.workdir, max_connections=n + 1000, replay_limit=replay,
                                           backlog=backlog, redis_url=redis_url, workers=workers,
                                           emit_host=emit_host, extra=extra)
        elif kind == "floor":
            server = await S.start_floor(self.workdir, replay=replay, backlog=backlog, redis_url=redis_url,
                                         workers=workers)
        elif kind == "node":
            server = await S.start_node(self.workdir, self.node, replay=replay, backlog=backlog)
        elif kind == "peer":
            server = await S.start_peer(self.workdir, replay=replay, backlog=backlog)
        else:
            raise ValueError(kind)
        self.started.append(server)
        return server

    def stop(self, server: S.Server) -> None:
        server.stop()
        if server in self.started:
            self.started.remove(server)

    def stop_all(self) -> None:
        for server in list(self.started):
            self.stop(server)

    async def pool(self, n: int) -> Pool:
        return await Pool.start(n, self.args.per_process)

    @staticmethod
    def proto(kind: str) -> str:
        return "eio" if kind == "peer" else "ws"

    def emit(self, line: dict) -> dict:
        applicable = SERVERS.get(line["scenario"], ())
        extra = {}
        if self.node_versions and "node" in line.get("servers", {}):
            extra["node_versions"] = self.node_versions
        unavailable = {k: why for k, why in self.unavailable.items() if k in applicable}
        if unavailable:
            extra["unavailable"] = unavailable
        line = {"scenario": line.pop("scenario"), **line, **extra, "at": datetime.datetime.now(datetime.UTC)
                .isoformat(timespec="seconds"), "machine": machine(), "versions": versions(),
                "quick": bool(self.args.quick)}
        text = json.dumps(line, separators=(",", ":"))
        print(text, flush=True)
        if self.args.out:
            with open(self.args.out, "a") as f:
                f.write(text + "\n")
        return line

    def kinds(self, default: list[str]) -> list[str]:
        """The servers of `default` that `--servers` chose (all by default), in the order
        chosen, less those not available here (Node ws without node or its `ws`: the reason
        is logged once, and kept for the JSON lines)."""
        chosen = self.args.servers.split(",") if self.args.servers else default
        kinds = [k for k in chosen if k in default]
        if "node" in kinds and self.node is None and "node" not in self.unavailable:
            command, found = S.ensure_node(log)
            if command is None:
                log(f"node: not available: {found}")
                self.unavailable["node"] = found
            else:
                self.node, self.node_versions = command, found
        return [k for k in kinds if k not in self.unavailable]

    async def connected(self, kind: str, server, pool: Pool, n: int, **options) -> dict:
        result = await pool.connect(server, rate=options.pop("rate", self.args.rate),
                                    concurrency=options.pop("concurrency", self.args.concurrency),
                                    proto=self.proto(kind), **options)
        log(f"{kind}: {result['connected']}/{n} connected in {result['elapsed_s']:.1f} s"
            + (f", failures {result['errors']}" if result["failed"] else ""))
        return result

    # -- fanout -----------------------------------------------------------------------

    async def fanout_one(self, kind: str, n: int, broadcasts: int, *, workers: int = 1, redis_url: str = "",
                         profile_name: str | None = None, deflate: bool = False, body: dict | None = None) -> dict:
        """`deflate`: eformws with `websocket.compression = true`, the clients offering it;
        `body`: more data in each broadcast."""
        extra = ("[websocket]", "compression = true") if deflate else ()
        server = await self.server(kind, n=n, workers=workers, redis_url=redis_url, extra=extra)
        pool = await self.pool(n)
        try:
            conn = await self.connected(kind, server, pool, n, deflate=deflate)
            await asyncio.sleep(self.args.settle)
            await pool.reset()
            http = Http(server.port, S.API_TOKEN)
            timeout = max(10.0, n / 500.0)
            profiler = Profiler(self.args.profile if profile_name else None, f"{profile_name}-{kind}", server.pid)
            gen0 = sum(g["cpu_s"] for g in await pool.stats())
            cpu0, start = server.cpu(), time.time()
            statuses = []
            for i in range(broadcasts):
                status, _ = await http.post("/api/websocket/broadcast", {
                    "namespace": NAMESPACE, "event": "bench",
                    "data": {"t": time.time(), "i": i, "lockerId": "kiosk-1:12", "state": "open", **(body or {})}})
                statuses.append(status)
                await pool.wait(i, timeout)
                if self.args.gap:
                    await asyncio.sleep(self.args.gap)
            elapsed, cpu = time.time() - start, server.cpu() - cpu0
            generators_cpu = sum(g["cpu_s"] for g in await pool.stats()) - gen0
            profile = profiler.stop()
            http.close()
            got = await pool.collect(broadcasts, timeout=5.0)
            result = {
                "n": n, "connected": conn["connected"], "connect_failures": conn["failed"],
                "broadcasts": broadcasts, "http_errors": sum(1 for s in statuses if s != 200),
                "expected": got["alive"] * broadcasts, "delivered": got["received"], "missing": got["missing"],
                "dups": got["dups"], "lost_connections": got["lost"] + got["closed_by_server"],
                **latency(got["samples"]), "server_cpu_s": round(cpu, 3), "elapsed_s": round(elapsed, 3),
                "server_rss_mib": round(server.rss() / 2**20, 1), "generators": len(pool.generators),
                "generators_cpu_s": round(generators_cpu, 3), "uvloop": pool.uvloop,
                "wire_bytes_per_message": round(got["wire_bytes"] / got["received"], 1) if got["received"] else None,
            }
            if profile is not None:
                result["profile"] = profile
            return result
        finally:
            await pool.close()
            self.stop(server)

    async def fanout(self, sizes: list[int], repeat: int) -> None:
        """Each N: every server `repeat` times, taking turns (eformws, floor, node, peer,
        eformws, ...), so a disturbance of the machine hits one run rather than one server; each
        figure is the median over the runs, counts are summed, every run is kept in `runs`."""
        for n in sizes:
            runs: dict[str, list[dict]] = {}
            for r in range(repeat):
                for kind in self.kinds(SERVERS["fanout"]):
                    log(f"fanout N={n}: {kind}" + (f" (run {r + 1} of {repeat})" if repeat > 1 else ""))
                    runs.setdefault(kind, []).append(await self.fanout_one(
                        kind, n, self.args.broadcasts, profile_name=f"fanout-{n}" if r == 0 else None))
            results = {kind: merge_runs(found) for kind, found in runs.items()}
            self.emit({"scenario": "fanout", "n": n, "repeat": repeat, "servers": results,
                       **self.compare(results, "fanout", n)})

    def compare(self, results: dict, scenario: str, n: int) -> dict:
        """The ratios eformws/<server> of RATIOS[scenario] for every other server that ran,
        and the issue's targets (against the floor and the peer)."""
        e, f, p = results.get("eformws"), results.get("floor"), results.get("peer")
        ratios, targets = {}, {}
        for other in SERVERS[scenario]:
            if e and other != "eformws" and results.get(other):
                ratios[f"eformws/{other}"] = {name: ratio(e[k], results[other][k])
                                              for name, k in RATIOS[scenario].items()}
        if scenario == "fanout" and e:
            if f:
                targets["p50 <= 1.15 x floor"] = (ratios["eformws/floor"]["p50_ms"] or 99) <= 1.15
                targets["p99 <= 1.15 x floor"] = (ratios["eformws/floor"]["p99_ms"] or 99) <= 1.15
            if n == 5000:
                targets["p50 < 150 ms"] = (e["p50_ms"] or 1e9) < 150
                if p:
                    targets["p50 <= 0.3 x peer"] = (ratios["eformws/peer"]["p50_ms"] or 99) <= 0.3
        if scenario in ("fanout", "rooms", "workers") and e:
            targets["every message delivered once"] = e["missing"] == 0 and e["dups"] == 0 and e["expected"] > 0
        if scenario == "connect" and e:
            if f:
                targets["rate >= 0.7 x floor"] = (ratios["eformws/floor"]["rate"] or 0) >= 0.7
            targets["0 failures"] = e["failures"] == 0
        if scenario == "idle" and e:
            targets["<= 12 KiB per connection"] = e["kib_per_connection"] <= 12
        if scenario == "emit" and e:
            # sustained: every offered event stored, at >= 98 % of the offered rate (the rate is
            # measured from the first emit to the last store, so a backlog shows as a lower rate)
            full = e["offered_per_s"] >= 5000 and e["subscribers"] >= 1000  # None: not measured at this size
            targets[">= 5000 events/s sustained"] = (
                e["stored"] == e["sent"] and (e["stored_per_s"] or 0) >= 0.98 * e["offered_per_s"]
            ) if full else None
            targets["p99 < 100 ms"] = (e["p99_ms"] or 1e9) < 100 if full else None
            targets["every event delivered once"] = e["missing"] == 0 and e["dups"] == 0 and e["failed"] == 0
        return {"ratios": ratios, "targets": targets}

    # -- rooms ------------------------------------------------------------------------

    async def rooms(self, n: int, room_count: int, rounds: int) -> None:
        results = {}
        for kind in self.kinds(SERVERS["rooms"]):
            log(f"rooms N={n} in {room_count} rooms: {kind}")
            server = await self.server(kind, n=n)
            pool = await self.pool(n)
            try:
                conn = await self.connected(kind, server, pool, n, rooms=room_count)
                await asyncio.sleep(self.args.settle)
                await pool.reset()
                http = Http(server.port, S.API_TOKEN)
                total = room_count * rounds
                profiler = Profiler(self.args.profile, f"rooms-{kind}", server.pid)
                cpu0, start = server.cpu(), time.time()
                errors = 0
                for i in range(total):
                    status, _ = await http.post("/api/websocket/broadcast", {
                        "namespace": NAMESPACE, "event": "bench", "room": f"kiosk-{i % room_count}",
                        "data": {"t": time.time(), "i": i, "lockerId": f"kiosk-{i % room_count}:3", "state": "open"}})
                    errors += status != 200
                sent = time.time() - start
                got = await pool.collect(rounds, timeout=max(10.0, n / 500.0))
                elapsed, cpu = time.time() - start, server.cpu() - cpu0
                profile = profiler.stop()
                http.close()
                results[kind] = {
                    "n": n, "rooms": room_count, "messages": total, "connected": conn["connected"],
                    "connect_failures": conn["failed"], "http_errors": errors,
                    "expected": got["alive"] * rounds, "delivered": got["received"], "missing": got["missing"],
                    "dups": got["dups"], "misrouted": got["misrouted"], **latency(got["samples"]),
                    "messages_per_s": round(total / sent, 1), "server_cpu_s": round(cpu, 3),
                    "elapsed_s": round(elapsed, 3),
                }
                if profile is not None:
                    results[kind]["profile"] = profile
            finally:
                await pool.close()
                self.stop(server)
        self.emit({"scenario": "rooms", "n": n, "rooms": room_count, "servers": results,
                   **self.compare(results, "rooms", n)})

    # -- connect ----------------------------------------------------------------------

    async def populate(self, server, count: int) -> None:
        """`count` stored events for /ws/lockers' default room, replayed to each connect."""
        http = Http(server.port, S.API_TOKEN)
        for k in range(count):
            status, body = await http.post("/api/websocket/events", {"type": "locker_state_changed", "data": {
                "lockerId": f"kiosk-1:{k}", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"}})
            if status != 201:
                raise RuntimeError(f"populating the store: {status} {body}")
        http.close()

    async def connect(self, n: int, replay: int) -> None:
        results = {}
        for kind in self.kinds(SERVERS["connect"]):
            log(f"connect N={n} (replay {replay}): {kind}")
            server = await self.server(kind, n=n, replay=replay)
            if kind == "eformws" and replay:
                await self.populate(server, replay)
            pool = await self.pool(n)
            try:
                profiler = Profiler(self.args.profile, f"connect-{kind}", server.pid)
                cpu0 = server.cpu()
                conn = await self.connected(kind, server, pool, n, rate=0, concurrency=self.args.connect_concurrency,
                                            replay=replay)
                cpu = server.cpu() - cpu0
                profile = profiler.stop()
                hs = conn["handshake_ms"]
                results[kind] = {
                    "n": n, "replay": replay, "connected": conn["connected"], "failures": conn["failed"],
                    "errors": conn["errors"], "elapsed_s": round(conn["elapsed_s"], 3),
                    "rate_per_s": round(conn["connected"] / conn["elapsed_s"], 1) if conn["elapsed_s"] else None,
                    "handshake_p50_ms": percentile(hs, 50), "handshake_p99_ms": percentile(hs, 99),
                    "server_cpu_s": round(cpu, 3),
                    "server_cpu_ms_per_connect": round(cpu * 1000 / max(1, conn["connected"]), 3),
                }
                if profile is not None:
                    results[kind]["profile"] = profile
            finally:
                await pool.close()
                self.stop(server)
        self.emit({"scenario": "connect", "n": n, "replay": replay, "concurrency": self.args.connect_concurrency, "servers": results,
                   **self.compare(results, "connect", n)})

    # -- idle -------------------------------------------------------------------------

    async def idle(self, n: int) -> None:
        results = {}
        for kind in self.kinds(SERVERS["idle"]):
            log(f"idle N={n}: {kind}")
            server = await self.server(kind, n=n)
            try:
                warm = await self.pool(100)  # first connections allocate what every later one reuses
                await self.connected(kind, server, warm, 100)
                await warm.close()
                await asyncio.sleep(self.args.settle + 1)
                before = server.rss()
                pool = await self.pool(n)
                try:
                    conn = await self.connected(kind, server, pool, n)
                    await asyncio.sleep(self.args.settle + 2)
                    after = server.rss()
                    alive = (await pool.collect(0))["alive"]
                finally:
                    await pool.close()
                results[kind] = {
                    "n": n, "connected": conn["connected"], "alive": alive, "rss_before_mib": round(before / 2**20, 1),
                    "rss_after_mib": round(after / 2**20, 1),
                    "kib_per_connection": round((after - before) / 1024 / max(1, alive), 2),
                }
            finally:
                self.stop(server)
        self.emit({"scenario": "idle", "n": n, "servers": results, **self.compare(results, "idle", n)})

    # -- emit -------------------------------------------------------------------------

    async def emit_scenario(self, subscribers: int, rate: float, seconds: float) -> None:
        results = {}
        for kind in self.kinds(SERVERS["emit"]):
            log(f"emit {rate:g}/s for {seconds:g} s, {subscribers} subscribers: {kind}")
            server = await self.server(kind, n=subscribers, emit_host=kind == "eformws")
            pool = await self.pool(subscribers)
            try:
                conn = await self.connected(kind, server, pool, subscribers, rooms=subscribers, leave_default=True)
                await asyncio.sleep(self.args.settle)
                await pool.reset()
                profiler = Profiler(self.args.profile, f"emit-{kind}", server.pid)
                cpu0 = server.cpu()
                answer = json.loads(await server.control(f"emit {rate} {seconds} {subscribers}",
                                                         timeout=seconds * 10 + 60))
                cpu = server.cpu() - cpu0
                profile = profiler.stop()
                per = int(rate * seconds) // subscribers
                got = await pool.collect(per, timeout=10.0)
                stored = answer.get("stored", answer.get("sent"))
                results[kind] = {
                    "subscribers": subscribers, "connected": conn["connected"], "offered_per_s": rate,
                    "seconds": seconds, "sent": answer["sent"], "stored": stored, "failed": answer.get("failed", 0),
                    "error": answer.get("error"),
                    "stored_per_s": round(stored / answer["elapsed"], 1) if answer["elapsed"] else None,
                    "expected": got["alive"] * per, "delivered": got["received"], "missing": got["missing"],
                    "dups": got["dups"], "misrouted": got["misrouted"], **latency(got["samples"]),
                    "server_cpu_s": round(cpu, 3),
                }
                if profile is not None:
                    results[kind]["profile"] = profile
            finally:
                await pool.close()
                self.stop(server)
        self.emit({"scenario": "emit", "subscribers": subscribers, "offered_per_s": rate, "seconds": seconds,
                   "store": "sqlite", "via": "python api (emit host)", "servers": results,
                   **self.compare(results, "emit", subscribers)})

    # -- compression --------------------------------------------------------------------

    async def compression(self, n: int, repeat: int) -> None:
        """eformws's fan-out to N clients without and with permessage-deflate (the clients offer
        it), the broadcast carrying a kiosk's 24 lockers (about 1.5 KiB as JSON): latency, server
        CPU, and the bytes each client read a message (its frame as on the wire)."""
        body = {"lockers": [{"lockerId": f"kiosk-1:{k}", "state": "open" if k % 3 else "closed",
                             "updatedAt": "2026-12-02T10:00:00.000Z", "battery": 80 + k % 20} for k in range(24)]}
        runs: dict[str, list[dict]] = {}
        for r in range(repeat):
            for mode in ("plain", "deflate"):
                log(f"compression N={n}: {mode} (run {r + 1} of {repeat})")
                runs.setdefault(mode, []).append(await self.fanout_one(
                    "eformws", n, self.args.broadcasts, deflate=mode == "deflate", body=body))
        results = {mode: merge_runs(found) for mode, found in runs.items()}
        plain, deflate = results["plain"], results["deflate"]
        self.emit({"scenario": "compression", "n": n, "repeat": repeat, "servers": {"eformws": results},
                   "deflate/plain": {k: ratio(deflate.get(k), plain.get(k))
                                     for k in ("p50_ms", "p99_ms", "server_cpu_s", "wire_bytes_per_message")}})

    # -- emit over HTTP -------------------------------------------------------------------

    async def emit_http(self, subscribers: int, events: int, batches: list[int], connections: int) -> None:
        """Events posted to `POST /api/websocket/events` by `bench.httpgen` (its own process),
        one event a request and in batches, each event to one of `subscribers` kiosks: the
        rate stored (201s / seconds from the first request to the last answer) and delivered."""
        results = {}
        log(f"emit-http: {events} events, batches {batches}, {connections} connections, {subscribers} subscribers")
        for batch in batches:
            server = await self.server("eformws", n=subscribers)
            pool = await self.pool(subscribers)
            try:
                conn = await self.connected("eformws", server, pool, subscribers, rooms=subscribers, leave_default=True)
                await asyncio.sleep(self.args.settle)
                await pool.reset()
                count = events // subscribers * subscribers  # every kiosk the same number
                cpu0 = server.cpu()
                generator = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.httpgen", "--port", str(server.port), "--token", S.API_TOKEN,
                    "--events", str(count), "--batch", str(batch), "--connections", str(connections),
                    "--rooms", str(subscribers), stdout=asyncio.subprocess.PIPE,
                    env=dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")))
                answer = json.loads((await generator.communicate())[0])
                cpu = server.cpu() - cpu0
                got = await pool.collect(count // subscribers, timeout=30.0)
                results[f"batch-{batch}"] = {
                    "batch": batch, "connections": connections, "subscribers": subscribers,
                    "connected": conn["connected"], "events": count, "stored": answer["stored"],
                    "statuses": answer["statuses"], "elapsed_s": round(answer["elapsed"], 3),
                    "stored_per_s": round(answer["stored"] / answer["elapsed"], 1) if answer["elapsed"] else None,
                    "request_p50_ms": answer["request_p50_ms"], "request_p99_ms": answer["request_p99_ms"],
                    "expected": got["alive"] * (count // subscribers), "delivered": got["received"],
                    "missing": got["missing"], "dups": got["dups"], "misrouted": got["misrouted"],
                    **latency(got["samples"]),
                    "server_cpu_us_per_event": round(cpu / count * 1e6, 1) if count else None,
                }
            finally:
                await pool.close()
                self.stop(server)
        self.emit({"scenario": "emit-http", "subscribers": subscribers, "store": "sqlite",
                   "via": "POST /api/websocket/events", "servers": {"eformws": results}})

    # -- workers ----------------------------------------------------------------------

    async def workers(self, n: int) -> None:
        redis, url = await S.start_redis(self.workdir)
        self.started.append(redis)
        results = {}
        try:
            for kind in self.kinds(SERVERS["workers"]):
                log(f"workers N={n}, 2 workers + Redis: {kind}")
                results[kind] = await self.fanout_one(kind, n, self.args.broadcasts, workers=2, redis_url=url)
        finally:
            self.stop(redis)
        self.emit({"scenario": "workers", "n": n, "workers": 2, "servers": results,
                   **self.compare(results, "workers", n)})


async def amain(args) -> int:
    sizes = QUICK if args.quick else FULL
    scenarios = args.scenarios
    if "all" in scenarios:
        scenarios = ["fanout", "rooms", "connect", "idle", "emit", "emit-http", "compression", "workers", "wamp",
                     "report"]
    bench = Bench(args)
    log(f"run directory {bench.workdir}; results to {args.out}")
    try:
        for scenario in scenarios:
            if scenario == "fanout":
                await bench.fanout(args.n or sizes["fanout"], args.repeat or sizes["fanout_repeat"])
            elif scenario == "rooms":
                await bench.rooms((args.n or [sizes["rooms"]])[0], args.room_count or sizes["room_count"], args.rounds)
            elif scenario == "connect":
                await bench.connect((args.n or [sizes["connect"]])[0], args.replay)
                if "all" in args.scenarios and args.replay:
                    await bench.connect((args.n or [sizes["connect"]])[0], 0)  # the same without replay
            elif scenario == "idle":
                await bench.idle((args.n or [sizes["idle"]])[0])
            elif scenario == "emit":
                await bench.emit_scenario((args.n or [sizes["emit_subscribers"]])[0],
                                          args.emit_rate or sizes["emit_rate"],
                                          args.emit_seconds or sizes["emit_seconds"])
            elif scenario == "workers":
                await bench.workers((args.n or [sizes["workers"]])[0])
            elif scenario == "compression":
                await bench.compression((args.n or [1000])[0], args.repeat or sizes["fanout_repeat"])
            elif scenario == "emit-http":
                await bench.emit_http((args.n or [100])[0], args.emit_http_events or sizes["emit_http_events"],
                                      args.emit_http_batches, args.emit_http_connections)
            elif scenario == "wamp":
                from bench.report import render_wamp
                from bench.wamp import run_wamp

                lines = await run_wamp(bench, args.wamp_callers, args.wamp_subscribers,
                                       args.wamp_seconds or sizes["wamp_seconds"],
                                       args.wamp_repeat or sizes["wamp_repeat"], args.wamp_window,
                                       max_calls=args.wamp_max_calls, max_publications=args.wamp_max_publications)
                print("\n" + render_wamp(lines), flush=True)
            elif scenario == "report":
                from bench.report import write_report

                write_report(Path(args.out), quick=args.quick, doc=args.doc)
            else:
                raise SystemExit(f"unknown scenario {scenario!r}")
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+",
                        help="all | fanout | rooms | connect | idle | emit | emit-http | compression | workers | wamp | report")
    parser.add_argument("--quick", action="store_true", help="small sizes, for checking the harness")
    parser.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")],
                        help="client count(s), comma-separated (fanout takes several)")
    parser.add_argument("--servers", default="",
                        help="subset of eformws,floor,node,peer (wamp: eformws,crossbar) (default: all that apply; "
                             "node: Node.js + ws, fanout/rooms/connect/idle)")
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=0,
                        help="fanout: runs of each server per N, taking turns; medians reported (default 3, --quick 1)")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between a broadcast's last receipt and the next")
    parser.add_argument("--rate", type=float, default=2000.0, help="connects per second while setting up")
    parser.add_argument("--concurrency", type=int, default=400, help="handshakes in flight while setting up")
    parser.add_argument("--connect-concurrency", type=int, default=400, help="handshakes in flight in `connect`")
    parser.add_argument("--replay", type=int, default=50, help="events replayed on each connect in `connect`")
    parser.add_argument("--room-count", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="messages per room in `rooms`")
    parser.add_argument("--emit-rate", type=float, default=0)
    parser.add_argument("--emit-seconds", type=float, default=0)
    parser.add_argument("--emit-http-events", type=int, default=0,
                        help="emit-http: events posted in each run (default 100,000, --quick 5,000)")
    parser.add_argument("--emit-http-batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100],
                        help="emit-http: events a request of each run, comma-separated (1: one event object)")
    parser.add_argument("--emit-http-connections", type=int, default=8,
                        help="emit-http: keep-alive connections posting at once")
    parser.add_argument("--wamp-callers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50],
                        help="wamp: caller counts of the RPC runs, comma-separated")
    parser.add_argument("--wamp-subscribers", type=int, default=100, help="wamp: subscribers of the pub/sub run (0: none)")
    parser.add_argument("--wamp-seconds", type=float, default=0,
                        help="wamp: measured seconds of each run (default 10, --quick 3), after a warm-up of a fifth")
    parser.add_argument("--wamp-repeat", type=int, default=0,
                        help="wamp: runs of each router, taking turns; medians reported (default 3, --quick 1)")
    parser.add_argument("--wamp-window", type=int, default=10,
                        help="wamp: publications in flight (not yet received by every subscriber)")
    parser.add_argument("--wamp-max-calls", type=int, default=0, help="wamp: stop each caller after this many calls")
    parser.add_argument("--wamp-max-publications", type=int, default=0,
                        help="wamp: stop the publisher after this many publications")
    parser.add_argument("--crossbar-venv", type=Path, default=None,
                        help="wamp: Crossbar.io's virtualenv, made on first use (default ~/.cache/eformws-bench/crossbar-VERSION)")
    parser.add_argument("--per-process", type=int, default=2500, help="connections per load-generator process")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog of every server")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory: py-spy record each server during fanout, rooms, connect and emit (needs the bench extra)")
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "performance.md",
                        help="page whose results section `report` rewrites (the plot goes beside it)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (servers' logs and stores)")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS), help="results file (JSON lines, appended)")
    args = parser.parse_args(argv)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
