"""The load generator of the `emit-http` scenario, a process of its own: EVENTS events
posted to `POST /api/websocket/events` over CONNECTIONS keep-alive connections, BATCH
events a request (1: one event object a request; more: a JSON array), each connection
posting its next request as soon as the last is answered. Event k is a
`locker_state_changed` for kiosk `kiosk-(k % ROOMS)` with `metadata = {"t": <time.time()
as the request is written>, "i": k}`. Prints one JSON line: requests, events stored and
refused, statuses, elapsed seconds (first request written to last answer) and the
requests' latency."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bench.pool import Http


def event(k: int, rooms: int, now: float) -> dict:
    kiosk = f"kiosk-{k % rooms}"
    return {"type": "locker_state_changed",
            "data": {"lockerId": f"{kiosk}:1", "oldState": "closed", "newState": "open", "kioskId": kiosk,
                     "metadata": {"t": now, "i": k}}}


class Totals:
    def __init__(self, events: int):
        self.events = events
        self.next = 0
        self.stored = 0
        self.refused = 0
        self.statuses: dict[str, int] = {}
        self.latency_ms: list[float] = []
        self.last = 0.0

    def take(self, batch: int) -> range:
        first = self.next
        self.next = min(self.events, first + batch)
        return range(first, self.next)


async def lane(port: int, token: str, batch: int, rooms: int, totals: Totals) -> None:
    http = Http(port, token)
    try:
        while True:
            ks = totals.take(batch)
            if not ks:
                return
            now = time.time()
            items = [event(k, rooms, now) for k in ks]
            status, answer = await http.post("/api/websocket/events", items[0] if batch == 1 else items)
            totals.latency_ms.append((time.time() - now) * 1000.0)
            totals.last = time.time()
            results = answer["results"] if batch > 1 and status == 200 else [{"statusCode": status}] * len(ks)
            for result in results:
                code = str(result["statusCode"])
                totals.statuses[code] = totals.statuses.get(code, 0) + 1
                if code == "201":
                    totals.stored += 1
                else:
                    totals.refused += 1
    finally:
        http.close()


async def amain(args) -> dict:
    totals = Totals(args.events)
    start = time.time()
    await asyncio.gather(*(lane(args.port, args.token, args.batch, args.rooms, totals)
                           for _ in range(args.connections)))
    ordered = sorted(totals.latency_ms)

    def pct(p: float):
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else None

    return {"requests": len(ordered), "events": totals.next, "stored": totals.stored, "refused": totals.refused,
            "statuses": totals.statuses, "elapsed": (totals.last or time.time()) - start,
            "request_p50_ms": pct(0.5), "request_p99_ms": pct(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rooms", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    result = (uvloop.run if uvloop else asyncio.run)(amain(args))
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
