"""`python -m bench wamp`: client-to-client WAMP through eformws's router and Crossbar.io's,
side by side in one run: RPC round trips (1 and 50 callers) and pub/sub events (100 subscribers).

Each router is started by the harness (eformws: `twistd -n eformws`, one process; Crossbar:
`crossbar start` from its own virtualenv, bench/servers.py), the servers taking turns per
repeat. The clients are bench/wampgen.py processes (raw WAMP, JSON serializer), the same
for both routers: a callee process and a callers process for RPC, one process holding the
subscribers and the publisher for pub/sub. Router CPU is user + system time from /proc over
the measured phase only (a warm-up of the same traffic comes first), divided by round trips
(RPC) or delivered events (pub/sub).
"""

from __future__ import annotations

import json
import time

from bench import servers as S
from bench.pool import Generator
from bench.profile import categorize
from bench.run import Profiler, log, merge_runs, ratio

REALM = "eform"
PROCEDURE = "app.bench.echo"
TOPIC = "app.bench.topic"
CROSSBAR_ROLE = "staff"
# eformws's per-session inbound limit (`wamp.rate_limit`, 1,000 messages/s by default) is a
# policy Crossbar does not have; lifted here so that both routers run at what they can do.
EFORMWS_WAMP = ("[wamp]", "rate_limit = 1000000", "rate_burst = 1000000")

# where a router's busy samples go (`--profile`: bench/profile.py's categorize), the same for both
PROFILE_CATEGORIES = [
    ("Autobahn sendData debug-log arguments", ("autobahn/util.py:hl", "autobahn/util.py:_qn", "click/termui")),
    ("decode (Autobahn JSON serializer, message parse)", ("Codec.decode", "Serializer.unserialize")),
    ("encode (Autobahn JSON serializer)", ("Codec.encode", "Serializer.serialize", "Message.serialize")),
    ("eformws invocation ids (secrets)", ("wamp/errors.py:new_id",)),
    ("send() system calls", ("untilConcludes", "writeSomeData")),
    ("epoll_ctl (Twisted add/remove writer)", ("EPollReactor._add", "EPollReactor._remove")),
    ("unmasking client frames", ("XorMasker",)),
    ("send path, rest (Autobahn, Twisted)", ("sendData", "sendFrame", "sendMessage", "sendPreparedMessage",
                                             "FileDescriptor.write", "ConnectionMixin.write", "doWrite")),
    ("router: eformws", ("eformws/",)),
    ("router: Crossbar", ("crossbar/",)),
    ("txaio", ("txaio/",)),
    ("frame parsing, rest (Autobahn)", ("autobahn/websocket", "autobahn/twisted")),
]

RPC_SUMMED = ("calls", "errors", "unanswered", "lost")
RPC_MEDIAN = ("calls_per_s", "cpu_us_per_call", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "server_cpu_s",
              "elapsed_s", "callee_cpu_s", "callers_cpu_s")
RPC_KEPT = ("calls_per_s", "cpu_us_per_call", "p50_ms", "p99_ms", "server_cpu_s")
PUBSUB_SUMMED = ("publications", "acknowledged", "errors", "expected", "delivered", "missing", "dups", "lost")
PUBSUB_MEDIAN = ("events_per_s", "publications_per_s", "cpu_us_per_event", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                 "mean_ms", "server_cpu_s", "elapsed_s", "client_cpu_s")
PUBSUB_KEPT = ("events_per_s", "cpu_us_per_event", "p50_ms", "p99_ms", "server_cpu_s")


class Router:
    """A started router, how a client joins it (port, path, ticket), and the process that
    routes (`routing_pid`: eformws's one process; Crossbar's router worker, whose process
    title is `crossbar-worker`), for py-spy."""

    def __init__(self, kind: str, server: S.Server, path: str, ticket: str | None):
        self.kind, self.server, self.path, self.ticket = kind, server, path, ticket
        self.routing_pid = server.pid
        for pid in S.tree(server.pid)[1:]:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "crossbar-worker":
                        self.routing_pid = pid
            except OSError:
                pass

    def join(self, group: str, n: int) -> dict:
        return {"cmd": "join", "group": group, "n": n, "host": "127.0.0.1", "port": self.server.port,
                "path": self.path, "realm": REALM, "ticket": self.ticket}


async def start_router(kind: str, workdir, crossbar_exe) -> Router:
    if kind == "eformws":
        server = await S.start_eformws(workdir, max_connections=1000, extra=EFORMWS_WAMP)
        return Router(kind, server, "/wamp", server.session)  # the ticket: an admin session's id
    server = await S.start_crossbar(workdir, crossbar_exe, realm=REALM, role=CROSSBAR_ROLE, prefix="app.")
    return Router(kind, server, "/", None)


async def joined(gen: Generator, router: Router, group: str, n: int) -> None:
    answer = await gen.call(router.join(group, n))
    if answer.get("joined") != n:
        raise RuntimeError(f"{router.kind}: {answer.get('joined')} of {n} {group} joined: {answer.get('errors')}"
                           f"\n{router.server.log_tail()}")


async def cpu_of(*gens: Generator) -> list[float]:
    return [(await g.call({"cmd": "stats"}))["cpu_s"] for g in gens]


def profiled(profiler: Profiler) -> dict | None:
    """py-spy's summary of the measured phase, with the busy samples by PROFILE_CATEGORIES."""
    summary = profiler.stop()
    if summary is not None:
        summary["categories_pct"] = categorize(profiler.path, PROFILE_CATEGORIES)
    return summary


async def rpc(router: Router, callers: int, seconds: float, warmup: float, max_calls: int, profile_dir=None) -> dict:
    """One callee registers PROCEDURE and echoes; `callers` sessions each CALL it one after
    the other (the next CALL once the RESULT is in) for `seconds` (or `max_calls` each)."""
    callee = await Generator.spawn("bench.wampgen")
    calling = await Generator.spawn("bench.wampgen")
    try:
        await joined(callee, router, "callee", 1)
        registered = await callee.call({"cmd": "register", "group": "callee", "procedure": PROCEDURE})
        if not registered["ok"]:
            raise RuntimeError(f"{router.kind}: REGISTER failed: {registered}")
        await joined(calling, router, "callers", callers)
        run = {"cmd": "calls", "group": "callers", "procedure": PROCEDURE}
        if warmup:
            await calling.call({**run, "seconds": warmup, "max_calls": max_calls})
        profiler = Profiler(profile_dir, f"wamp-rpc-{callers}-{router.kind}", router.routing_pid)
        gen0, cpu0 = await cpu_of(callee, calling), router.server.cpu()
        result = await calling.call({**run, "seconds": seconds, "max_calls": max_calls})
        cpu, gen1 = router.server.cpu() - cpu0, await cpu_of(callee, calling)
        profile = profiled(profiler)
        if not result["errors"]:
            result.pop("error_uris", None)
        if profile is not None:
            result["profile"] = profile
        return {**result, "server_cpu_s": round(cpu, 3),
                "cpu_us_per_call": round(cpu * 1e6 / result["calls"], 2) if result["calls"] else None,
                "callee_cpu_s": round(gen1[0] - gen0[0], 3), "callers_cpu_s": round(gen1[1] - gen0[1], 3),
                "uvloop": bool(calling.hello.get("uvloop"))}
    finally:
        await calling.close()
        await callee.close()


async def pubsub(router: Router, subscribers: int, seconds: float, warmup: float, window: int,
                 max_publications: int, profile_dir=None) -> dict:
    """`subscribers` sessions subscribe to TOPIC; one more publishes to it, acknowledged, with
    at most `window` publications not yet received by every subscriber."""
    gen = await Generator.spawn("bench.wampgen")
    try:
        await joined(gen, router, "subscribers", subscribers)
        subscribed = await gen.call({"cmd": "subscribe", "group": "subscribers", "topic": TOPIC})
        if not subscribed["ok"]:
            raise RuntimeError(f"{router.kind}: SUBSCRIBE failed: {subscribed}")
        await joined(gen, router, "publisher", 1)
        run = {"cmd": "publish", "group": "publisher", "subscribers": "subscribers", "topic": TOPIC, "window": window,
               "max_publications": max_publications}
        if warmup:
            await gen.call({**run, "seconds": warmup})
        profiler = Profiler(profile_dir, f"wamp-pubsub-{subscribers}-{router.kind}", router.routing_pid)
        gen0, cpu0 = await cpu_of(gen), router.server.cpu()
        result = await gen.call({**run, "seconds": seconds})
        cpu, gen1 = router.server.cpu() - cpu0, await cpu_of(gen)
        profile = profiled(profiler)
        if profile is not None:
            result["profile"] = profile
        return {**result, "server_cpu_s": round(cpu, 3),
                "cpu_us_per_event": round(cpu * 1e6 / result["delivered"], 2) if result["delivered"] else None,
                "client_cpu_s": round(gen1[0] - gen0[0], 3), "uvloop": bool(gen.hello.get("uvloop"))}
    finally:
        await gen.close()


def compare(scenario: str, results: dict) -> dict:
    """Ratios eformws/crossbar and the issue's targets: eformws's rate >= Crossbar's, and
    router CPU per round trip (per delivered event) <= 0.7 x Crossbar's."""
    e, c = results.get("eformws"), results.get("crossbar")
    rate, cpu = ("calls_per_s", "cpu_us_per_call") if scenario == "wamp_rpc" else ("events_per_s", "cpu_us_per_event")
    ratios, targets = {}, {}
    if e and c:
        ratios["eformws/crossbar"] = {rate: ratio(e[rate], c[rate]), cpu: ratio(e[cpu], c[cpu]),
                                      "p50_ms": ratio(e["p50_ms"], c["p50_ms"]),
                                      "p99_ms": ratio(e["p99_ms"], c["p99_ms"])}
    if e:
        r = ratios.get("eformws/crossbar")
        targets[f"{rate} >= crossbar"] = None if r is None else (r[rate] or 0) >= 1.0
        targets[f"{cpu} <= 0.7 x crossbar"] = None if r is None else (r[cpu] or 99) <= 0.7
        if scenario == "wamp_rpc":
            targets["every call answered"] = e["errors"] == 0 and e["unanswered"] == 0 and e["calls"] > 0
        else:
            targets["every event delivered once"] = e["missing"] == 0 and e["dups"] == 0 and e["delivered"] > 0
    return {"ratios": ratios, "targets": targets}


async def run_wamp(bench, callers: list[int], subscribers: int, seconds: float, repeat: int, window: int,
                   max_calls: int = 0, max_publications: int = 0) -> list[dict]:
    """Every scenario on every router `repeat` times, the routers taking turns (one started
    router serves a round's scenarios); one JSON line per scenario, medians over the runs."""
    args = bench.args
    kinds = bench.kinds(["eformws", "crossbar"])
    unavailable: dict[str, str] = {}
    crossbar_exe, crossbar_versions = None, None
    if "crossbar" in kinds:
        crossbar_exe, found = S.ensure_crossbar(args.crossbar_venv or S.crossbar_venv_default(), log)
        if crossbar_exe is None:
            log(f"crossbar: not available: {found}")
            unavailable["crossbar"] = found
            kinds.remove("crossbar")
        else:
            crossbar_versions = json.loads(found)
    if not kinds:
        log("wamp: no router to run")
        return []
    warmup = min(1.0, seconds / 5)
    scenarios = [("wamp_rpc", n) for n in callers] + ([("wamp_pubsub", subscribers)] if subscribers else [])
    runs: dict[tuple, dict[str, list[dict]]] = {key: {} for key in scenarios}
    for r in range(repeat):
        for kind in kinds:
            log(f"wamp: {kind}" + (f" (run {r + 1} of {repeat})" if repeat > 1 else ""))
            started = time.time()
            router = await start_router(kind, bench.workdir / f"{kind}-{r}", crossbar_exe)
            bench.started.append(router.server)
            try:
                for scenario, n in scenarios:
                    if scenario == "wamp_rpc":
                        found = await rpc(router, n, seconds, warmup, max_calls, args.profile if r == 0 else None)
                        log(f"  rpc, {n} caller(s): {found['calls_per_s']} calls/s, p50 {found['p50_ms']} ms, "
                            f"{found['cpu_us_per_call']} µs router CPU per call")
                    else:
                        found = await pubsub(router, n, seconds, warmup, window, max_publications,
                                             args.profile if r == 0 else None)
                        log(f"  pubsub, {n} subscribers: {found['events_per_s']} events/s, p50 {found['p50_ms']} ms, "
                            f"{found['cpu_us_per_event']} µs router CPU per event")
                    runs[(scenario, n)].setdefault(kind, []).append(found)
            finally:
                bench.stop(router.server)
            log(f"wamp: {kind} done in {time.time() - started:.0f} s")
    lines = []
    for (scenario, n), by_kind in runs.items():
        if scenario == "wamp_rpc":
            results = {k: merge_runs(v, RPC_SUMMED, RPC_MEDIAN, RPC_KEPT) for k, v in by_kind.items()}
        else:
            results = {k: merge_runs(v, PUBSUB_SUMMED, PUBSUB_MEDIAN, PUBSUB_KEPT) for k, v in by_kind.items()}
        line = {"scenario": scenario, "n": n, "seconds": seconds, "repeat": repeat, "servers": results,
                **({"window": window} if scenario == "wamp_pubsub" else {}),
                "unavailable": unavailable, "crossbar_versions": crossbar_versions,
                **compare(scenario, results)}
        lines.append(bench.emit(line))
    return lines
