"""The fault schedule: which faults hit what and when (bounded, drawn from the seed), and
running it against the cluster, recording when each fault really started and was healed."""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import asdict, dataclass, field

FIRST = 2.0  # seconds into the emitting phase before the first fault
HEALED_BY = 1.0  # seconds before the end of the emitting phase when every fault is over
RESTART_ALLOWANCE = 2.5  # a gateway takes about this long to listen again after a restart


@dataclass
class Fault:
    kind: str  # kill9, pause, redis-stop, redis-delay, sigterm-restart
    target: str  # a gateway's name, or "redis"
    at: float  # seconds into the emitting phase
    length: float  # seconds the fault lasts before healing starts
    amount: float | None = None  # the delay of redis-delay, seconds
    started: float | None = None  # what really happened (seconds since the run began)
    healed: float | None = None
    error: str | None = None
    notes: list = field(default_factory=list)

    @property
    def injected(self) -> bool:
        return self.started is not None and self.healed is not None and self.error is None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["injected"] = self.injected
        return out


def roles(mode: str, rng: random.Random, names: list[str]) -> dict[str, str]:
    """Redis mode: which gateway is killed, which paused, which sits behind the delay proxy."""
    if mode != "redis":
        return {"restarted": names[0]}
    shuffled = list(names)
    rng.shuffle(shuffled)
    return {"killed": shuffled[0], "paused": shuffled[1], "delayed": shuffled[2]}


def _start(rng: random.Random, length: float, duration: float) -> float:
    latest = max(FIRST, duration - HEALED_BY - length)
    return round(rng.uniform(FIRST, latest), 3)


def schedule(mode: str, duration: float, rng: random.Random, assigned: dict[str, str]) -> list[Fault]:
    """The faults of one run, their times drawn from `rng` within the emitting phase."""
    if mode == "redis":
        outage = round(rng.uniform(1.0, 2.0), 3)
        delay = round(rng.uniform(0.1, 0.3), 3)
        return sorted([
            Fault("kill9", assigned["killed"], _start(rng, 1.0 + RESTART_ALLOWANCE, duration), 1.0),
            Fault("pause", assigned["paused"], _start(rng, 3.0, duration), 3.0),
            Fault("redis-stop", "redis", _start(rng, outage, duration), outage),
            Fault("redis-delay", assigned["delayed"], _start(rng, 3.0, duration), 3.0, amount=delay),
        ], key=lambda f: f.at)
    target = assigned["restarted"]
    half = duration / 2
    first = round(rng.uniform(FIRST, max(FIRST, half - 1.0)), 3)
    second_earliest = max(first + 2 * RESTART_ALLOWANCE, half)
    second = round(rng.uniform(second_earliest, max(second_earliest, duration - HEALED_BY - 1.0 - RESTART_ALLOWANCE)), 3)
    return [Fault("sigterm-restart", target, first, 0.0), Fault("kill9", target, second, 1.0)]


async def run(faults: list[Fault], cluster, t0: float, clock) -> None:
    """Each fault at its time after loop time `t0`; returns once every one is healed."""
    await asyncio.gather(*(_one(fault, cluster, t0, clock) for fault in faults))


async def _one(fault: Fault, cluster, t0: float, clock) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + fault.at - loop.time()))
    try:
        if fault.kind == "kill9":
            gateway = cluster.gateway(fault.target)
            fault.started = clock()
            await gateway.kill()
            await asyncio.sleep(fault.length)
            await gateway.start()
        elif fault.kind == "sigterm-restart":
            gateway = cluster.gateway(fault.target)
            fault.started = clock()
            code = await gateway.terminate()
            fault.notes.append(f"exit code {code} after SIGTERM")
            await asyncio.sleep(fault.length)
            await gateway.start()
        elif fault.kind == "pause":
            gateway = cluster.gateway(fault.target)
            fault.started = clock()
            gateway.signal(signal.SIGSTOP)
            await asyncio.sleep(fault.length)
            gateway.signal(signal.SIGCONT)
        elif fault.kind == "redis-stop":
            fault.started = clock()
            code = await cluster.redis.stop()
            fault.notes.append(f"exit code {code} after SIGTERM")
            await asyncio.sleep(fault.length)
            await cluster.redis.start()
        elif fault.kind == "redis-delay":
            proxy = cluster.delay_proxy
            fault.started = clock()
            proxy.delay = fault.amount
            await asyncio.sleep(fault.length)
            proxy.delay = 0.0
        else:
            raise ValueError(f"unknown fault {fault.kind}")
        fault.healed = clock()
    except Exception as e:  # recorded: the run is then not a valid one
        fault.error = f"{type(e).__name__}: {e}"[:2000]


async def disconnects(proxy, rng: random.Random, stop: asyncio.Event, low: float = 0.3, high: float = 1.5) -> int:
    """Cut a random connection of the random-backend proxy every `low`-`high` seconds."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(low, high))
        except asyncio.TimeoutError:
            proxy.cut()
    return proxy.cuts
