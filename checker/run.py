"""`python -m checker --mode redis|sqlite --duration S --seed N [--out DIR]`: one bounded run
(cluster up, subscribers connected, emitters and faults for S seconds, quiescence, everything
stopped), its history and JSON verdict written to DIR, a one-paragraph summary printed; exit 0
iff the guarantee held and the run exercised every fault and client kind (1: violated, 2: the
run did not exercise what it should, or failed).

The run, in order:

1. Redis mode: a redis-server with AOF (fsync always), three gateways sharing it (one of them
   through `DelayProxy`); SQLite mode: one gateway with its SQLite file. A session for
   subscribers (`eformws sessions create`).
2. Subscribers on `/ws/events`: 3 steady raw clients (one per gateway), 3 flaky raw clients,
   2 EformClient programs behind `RandomProxy`; each must have its first `connection` (its
   start position) before anything is emitted.
3. For `--duration` seconds: 3 emitters (one per gateway), the fault schedule
   (checker/faults.py), the proxy cutting a random connection every 0.3-1.5 s, the flaky
   clients dropping every 0.5-2.5 s.
4. Quiescence: faults healed, disconnects stopped; until every subscriber's cursor reached
   the newest accepted seq, at most `QUIESCENCE` seconds.
5. Subscribers and gateways stopped, the log read (Redis stream or SQLite file), Redis
   stopped; history.json and verdict.json written (checker/verdict.py judges).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
import uuid
from pathlib import Path

from checker import faults as fault_schedule
from checker.clients import EformSubscriber, RawSubscriber, tag_of
from checker.cluster import Gateway, Redis, command, free_port
from checker.emitters import Emitter
from checker.proxy import DelayProxy, RandomProxy
from checker.verdict import judge, self_test, summary

ROOT = Path(__file__).resolve().parent.parent
QUIESCENCE = 20.0  # seconds at most for every subscriber to catch up
START_WAIT = 20.0  # seconds at most for every subscriber's first connection
FAULT_WAIT = 60.0  # seconds at most for the faults to be healed after the emitting phase
EMIT_RATE = 30.0  # events a second per emitter
STEADY, FLAKY, EFORM = 3, 3, 2
LOG_LINE = re.compile(r"\[([\w.]+)#(warn|error|critical)\] (.*)")


class Cluster:
    """What one run started: gateways, Redis and the proxies; `close()` ends all of it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.gateways: list[Gateway] = []
        self.redis: Redis | None = None
        self.delay_proxy: DelayProxy | None = None
        self.random_proxy: RandomProxy | None = None
        self.subscribers: list = []

    def gateway(self, name: str) -> Gateway:
        return next(g for g in self.gateways if g.name == name)

    def live(self) -> list[Gateway]:
        """Gateways whose process runs (a paused one included: it answers after SIGCONT)."""
        return [g for g in self.gateways if g.running]

    async def close(self) -> None:
        for subscriber in self.subscribers:
            try:
                if isinstance(subscriber, EformSubscriber):
                    await subscriber.process.kill()
                else:
                    await subscriber.stop()
            except Exception:
                pass
        for proxy in (self.random_proxy, self.delay_proxy):
            if proxy is not None:
                await proxy.close()
        for process in [*self.gateways, *([self.redis] if self.redis else [])]:
            if process.running:
                await process.kill()

    def kill_now(self) -> None:
        """Last resort, without the event loop: SIGKILL every child still running."""
        processes = [*self.gateways, *([self.redis] if self.redis else [])]
        processes += [s.process for s in self.subscribers if isinstance(s, EformSubscriber)]
        for process in processes:
            if process.proc is not None and process.proc.returncode is None:
                try:
                    os.kill(process.proc.pid, signal.SIGKILL)
                except OSError:
                    pass


async def read_redis_log(port: int, prefix: str) -> dict:
    meta = await command(port, "HGETALL", f"{prefix}events:log")
    meta = dict(zip(meta[::2], meta[1::2])) if meta else {}
    entries = []
    start = "-"
    while True:
        batch = await command(port, "XRANGE", f"{prefix}events", start, "+", "COUNT", 1000)
        for entry_id, flat in batch:
            fields = dict(zip(flat[::2], flat[1::2]))
            if "e" not in fields:
                continue
            envelope = json.loads(fields["e"])
            entries.append([int(entry_id.partition("-")[0]), fields.get("p"), envelope.get("id"), tag_of(envelope)])
        if len(batch) < 1000:
            break
        start = "(" + batch[-1][0]
    newest = int(meta["seq"]) if "seq" in meta else None
    low_water = entries[0][0] - 1 if entries else (newest or 0)
    return {"epoch": meta.get("epoch"), "newest": newest, "low_water": low_water, "entries": entries,
            "source": f"redis stream {prefix}events"}


def read_sqlite_log(path: Path) -> dict:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        epoch = connection.execute("SELECT value FROM event_log WHERE key = 'epoch'").fetchone()[0]
        row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        low_water = connection.execute("SELECT value FROM event_meta WHERE key = 'low_water'").fetchone()[0]
        entries = []
        for seq, text in connection.execute("SELECT seq, envelope FROM events ORDER BY seq"):
            envelope = json.loads(text)
            entries.append([seq, epoch, envelope.get("id"), tag_of(envelope)])
    finally:
        connection.close()
    if entries:
        low_water = max(low_water, entries[0][0] - 1)
    return {"epoch": epoch, "newest": row[0] if row else 0, "low_water": low_water, "entries": entries,
            "source": str(path)}


def gateway_log_findings(gateway: Gateway) -> dict:
    """Warnings, errors and tracebacks in a gateway's log (all of its starts)."""
    counts: dict[str, int] = {}
    samples: dict[str, str] = {}
    tracebacks = 0
    try:
        text = gateway.log_path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        if "Traceback (most recent call last)" in line:
            tracebacks += 1
        found = LOG_LINE.search(line)
        if found:
            message = re.sub(r"\d+", "N", found.group(3))[:160]
            key = f"{found.group(2)} {found.group(1)}: {message}"
            counts[key] = counts.get(key, 0) + 1
            samples.setdefault(key, line[:400])
    return {"tracebacks": tracebacks, "lines": [{"what": k, "count": v, "sample": samples[k]}
                                                 for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]}


def newest_accepted(emitters: list[Emitter]) -> tuple[int, str] | None:
    """(seq, epoch) of the newest accepted event, in the epoch of the event accepted last."""
    accepted = [(e["attempts"][-1]["t"], e["envelope"]) for em in emitters for e in em.events if e["accepted"]]
    if not accepted:
        return None
    epoch = max(accepted, key=lambda a: a[0])[1]["epoch"]
    return max(int(env["seq"]) for _, env in accepted if env["epoch"] == epoch), epoch


async def run(mode: str, duration: float, seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    began = loop.time()

    def clock() -> float:
        return round(loop.time() - began, 4)

    master = random.Random(seed)
    rngs = {name: random.Random(master.getrandbits(64)) for name in ("faults", "clients", "emit", "proxy", "cuts")}
    run_id = f"chk{seed}-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(out)
    timings: dict[str, float] = {}
    history: dict = {"mode": mode, "seed": seed, "duration": duration, "run_id": run_id, "out": str(out),
                     "started_at": time.time()}
    try:
        # 1. The cluster.
        names = ["g1", "g2", "g3"] if mode == "redis" else ["g1"]
        assigned = fault_schedule.roles(mode, rngs["faults"], names)
        prefix = f"chk-{uuid.uuid4().hex[:10]}:"
        if mode == "redis":
            cluster.redis = Redis(out / "redis", free_port())
            await cluster.redis.start()
            cluster.delay_proxy = DelayProxy(cluster.redis.port)
            await cluster.delay_proxy.start()
            for name in names:
                port = cluster.delay_proxy.port if name == assigned["delayed"] else cluster.redis.port
                cluster.gateways.append(Gateway(name, out / name, free_port(), redis_url=f"redis://127.0.0.1:{port}/0",
                                                prefix=prefix))
        else:
            cluster.gateways.append(Gateway("g1", out / "g1", free_port()))
        await asyncio.gather(*(g.start() for g in cluster.gateways))
        session = await cluster.gateways[0].create_session()
        cluster.random_proxy = RandomProxy(lambda: [g.port for g in cluster.live()], rngs["proxy"])
        await cluster.random_proxy.start()

        # 2. Subscribers, each at its start position before anything is emitted.
        raw: list[RawSubscriber] = []
        for kind, count in (("steady", STEADY), ("flaky", FLAKY)):
            for i in range(count):
                home = cluster.gateways[i % len(cluster.gateways)]
                rng = random.Random(rngs["clients"].getrandbits(64))
                raw.append(RawSubscriber(f"{kind}-{i + 1}", kind, session, cluster.live, home, rng, clock))
        eform = [EformSubscriber(f"eform-{i + 1}", f"ws://127.0.0.1:{cluster.random_proxy.port}", session, out, ROOT)
                 for i in range(EFORM)]
        cluster.subscribers = [*raw, *eform]
        for subscriber in raw:
            subscriber.start()
        for subscriber in eform:
            await subscriber.start()
        deadline = loop.time() + START_WAIT
        while not (all(s.started.is_set() for s in raw) and all(s.started for s in eform)):
            if loop.time() > deadline:
                late = [s.name for s in raw if not s.started.is_set()] + [s.name for s in eform if not s.started]
                raise RuntimeError(f"subscribers without a first connection after {START_WAIT} s: {late}")
            await asyncio.sleep(0.05)
        timings["setup"] = clock()

        # 3. Emitting, with faults and disconnects.
        emitters = [Emitter(f"e{i + 1}", cluster.gateways[i % len(cluster.gateways)], run_id, EMIT_RATE,
                            random.Random(rngs["emit"].getrandbits(64)), clock) for i in range(3)]
        planned = fault_schedule.schedule(mode, duration, rngs["faults"], assigned)
        stop = asyncio.Event()
        t0 = loop.time()
        emitting = [asyncio.ensure_future(e.run(stop)) for e in emitters]
        cutting = asyncio.ensure_future(fault_schedule.disconnects(cluster.random_proxy, rngs["cuts"], stop))
        injecting = asyncio.ensure_future(fault_schedule.run(planned, cluster, t0, clock))
        await asyncio.sleep(duration)
        stop.set()
        await asyncio.gather(*emitting, cutting)
        try:
            await asyncio.wait_for(injecting, FAULT_WAIT)
        except asyncio.TimeoutError:
            pass
        timings["emitting"] = round(clock() - timings["setup"], 3)
        for gateway in cluster.gateways:  # whatever happened, quiescence is with every gateway up
            if gateway.paused:
                gateway.signal(signal.SIGCONT)
            if not gateway.running:
                await gateway.start()
        if cluster.redis is not None:
            cluster.delay_proxy.delay = 0.0
            if not cluster.redis.running:
                await cluster.redis.start()

        # 4. Quiescence.
        for subscriber in raw:
            subscriber.calm = True
        target = newest_accepted(emitters)
        waited_from = loop.time()
        while True:
            lagging = [s.name for s in [*raw, *eform] if not s.caught_up(target)]
            if not lagging or loop.time() - waited_from > QUIESCENCE:
                break
            await asyncio.sleep(0.1)
        history["quiescence"] = {
            "target": list(target) if target else None, "caught_up": not lagging, "lagging": lagging,
            "waited": round(loop.time() - waited_from, 3),
            "cursors": {s.name: list(s.cursor) if s.cursor else None for s in [*raw, *eform]},
        }
        timings["quiescence"] = history["quiescence"]["waited"]

        # 5. Stop and read the log.
        teardown = clock()
        await asyncio.gather(*(s.stop() for s in [*raw, *eform]))
        exit_codes = {}
        for gateway in cluster.gateways:
            exit_codes[gateway.name] = await gateway.terminate()
        if mode == "redis":
            history["log"] = await read_redis_log(cluster.redis.port, prefix)
            await cluster.redis.stop()
        else:
            history["log"] = read_sqlite_log(cluster.gateways[0].workdir / "events.db")
        timings["teardown"] = round(clock() - teardown, 3)

        history["gateways"] = [{"name": g.name, "port": g.port, "starts": g.started, "final_exit_code": exit_codes[g.name],
                                "role": next((role for role, name in assigned.items() if name == g.name), None),
                                "log": str(g.log_path), "log_findings": gateway_log_findings(g)}
                               for g in cluster.gateways]
        history["emitters"] = [{"name": e.name, "gateway": e.gateway.name, "events": e.events} for e in emitters]
        history["clients"] = [s.summary() for s in [*raw, *eform]]
        history["faults"] = [f.as_dict() for f in planned]
        history["disconnects"] = {"proxy_cuts": cluster.random_proxy.cuts, "proxy_accepted": cluster.random_proxy.accepted,
                                  "proxy_refused": cluster.random_proxy.refused,
                                  "proxy_routed": {str(k): v for k, v in cluster.random_proxy.routed.items()}}
        timings["total"] = clock()
        history["timings"] = timings
        return history
    finally:
        try:
            await asyncio.shield(cluster.close())
        except BaseException:
            cluster.kill_now()
            raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("redis", "sqlite"), required=True)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of emitting and faults (default 15)")
    parser.add_argument("--seed", type=int, default=None, help="draws the fault schedule and every random choice")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for logs, history.json and verdict.json (default artifacts/checker/...)")
    parser.add_argument("--self-test", action="store_true",
                        help="also judge the history with a fault planted (drop, duplicate, swap, ...): "
                             "each must be caught")
    args = parser.parse_args(argv)
    if args.duration < 5:
        parser.error("--duration must be at least 5 seconds (the faults need room)")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out = args.out or ROOT / "artifacts" / "checker" / f"{args.mode}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty (each run writes its logs and verdict to a directory of its own)")
    try:
        history = asyncio.run(run(args.mode, args.duration, seed, out))
    except KeyboardInterrupt:
        print("checker: interrupted; every process it started was killed", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"checker: the run failed before a verdict: {type(e).__name__}: {e} (logs in {out})", file=sys.stderr)
        return 2
    (out / "history.json").write_text(json.dumps(history, separators=(",", ":")))
    verdict = judge(history)
    verdict["timings"] = history["timings"]
    verdict["gateways"] = history["gateways"]
    verdict["disconnects"] = history["disconnects"]
    verdict["out"] = str(out)
    code = 0 if verdict["ok"] else (1 if not verdict["holds"] else 2)
    if args.self_test:
        verdict["self_test"] = self_test(history)
        if not all(result["caught"] in (True, None) for result in verdict["self_test"].values()):
            code = code or 1
    verdict["exit_code"] = code
    (out / "verdict.json").write_text(json.dumps(verdict, indent=1))
    print(summary(verdict))
    print(f"checker: {out / 'verdict.json'} (took {history['timings']['total']:.1f} s)")
    if args.self_test:
        print("checker: self-test " + json.dumps(verdict["self_test"]))
    return code
