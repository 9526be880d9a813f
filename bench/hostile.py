"""`python -m bench.hostile [SCENARIO ...]`: hostile and lagging clients against a real
`twistd eformws` (shipped defaults), each bounded in time, with the server's RSS before,
at its highest during, and after; one JSON line per scenario (docs/reliability.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import websockets

from bench import servers as S
from bench.rawclient import StalledClient, client_frame

LOCKERS = "/ws/lockers"
MIB = 1024 * 1024


async def stalled(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection with a 4 KiB receive buffer that never reads after the handshake."""
    client = await StalledClient.connect(port, path)
    return client.reader, client.writer


async def close_code(reader: asyncio.StreamReader, timeout: float = 30.0) -> int | None:
    """Read what the server sent up to its close frame: the code (None: dropped without one)."""
    try:
        return await asyncio.wait_for(StalledClient(reader, None).close_code(), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class Watch:
    """The server's RSS: before, the highest seen while `sample()` runs, after."""

    def __init__(self, server):
        self.server = server
        self.before = server.rss()
        self.peak = self.before

    async def sample(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.peak = max(self.peak, self.server.rss())
            await asyncio.sleep(0.2)

    def figures(self) -> dict:
        return {"rss_before_mib": round(self.before / MIB, 1), "rss_peak_mib": round(self.peak / MIB, 1),
                "rss_after_mib": round(self.server.rss() / MIB, 1)}


async def replies(server, seconds: float) -> dict:
    """10 staff connections send pings echoing 60 KB, 15 a second (under the rate limit),
    and never read."""
    watch = Watch(server)
    ping = client_frame(0x1, json.dumps({"type": "ping", "data": {"timestamp": "x" * 60000}}).encode())
    links = [await stalled(server.port, f"{LOCKERS}?sessionId={server.session}") for _ in range(10)]

    async def send(writer):
        try:
            for _ in range(int(seconds * 15)):
                writer.write(ping)
                await writer.drain()
                await asyncio.sleep(1 / 15)
        except ConnectionError:
            pass

    await asyncio.gather(watch.sample(seconds), *(send(w) for _, w in links))
    closed = await slow_consumer_closes(server)
    for _, w in links:
        w.close()
    await asyncio.sleep(1)
    return {"connections": 10, "closed_1013": closed, **watch.figures()}


async def slow_consumer_closes(server) -> float:
    """eformws_slow_consumer_closes_total of the legacy namespaces, from /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    for line in text.splitlines():
        if line.startswith('eformws_slow_consumer_closes_total{transport="websocket"}'):
            return float(line.split()[-1])
    return 0.0


async def control_pings(server, seconds: float) -> dict:
    """One connection sends 125-byte control pings as fast as it can (reading what comes)."""
    watch = Watch(server)
    reader, writer = await stalled(server.port, f"{LOCKERS}?sessionId={server.session}")
    ping = client_frame(0x9, b"p" * 125)
    sent = 0
    closing = asyncio.ensure_future(close_code(reader, seconds + 10))

    async def send():
        nonlocal sent
        deadline = time.time() + seconds
        try:
            while time.time() < deadline and not closing.done():
                writer.write(ping * 10)
                sent += 10
                await writer.drain()
        except ConnectionError:
            pass

    await asyncio.gather(watch.sample(seconds), send())
    code = await closing
    writer.close()
    return {"pings_sent": sent, "close_code": code, **watch.figures()}


async def catch_up(server, events: int) -> dict:
    """`events` stored, then a client from `?since=0` at full speed and one reading 2,000
    events a second; each must get every one, in order."""
    import aiohttp

    headers = {"Authorization": f"Bearer {S.API_TOKEN}"}
    data = {"lockerId": "L1", "oldState": "closed", "newState": "open", "kioskId": "k1", "reason": "r" * 300}
    async with aiohttp.ClientSession(headers=headers) as http:
        url = f"http://127.0.0.1:{server.port}/api/websocket/events"
        queue = asyncio.Queue()
        for _ in range(events):
            queue.put_nowait(None)

        async def post():
            while not queue.empty():
                queue.get_nowait()
                async with http.post(url, json={"type": "locker_state_changed", "data": data}) as answer:
                    assert answer.status == 201, answer.status
                    stored = await answer.json()
            return stored

        last = max([await task for task in [asyncio.ensure_future(post()) for _ in range(20)]],
                   key=lambda e: int(e["seq"]))
    watch = Watch(server)
    path = f"ws://127.0.0.1:{server.port}{LOCKERS}?sessionId={server.session}&since=0&epoch={last['epoch']}"

    async def read(rate: float | None) -> dict:
        started, got, previous = time.time(), 0, 0
        ordered = True
        async with websockets.connect(path, max_queue=4, max_size=None) as connection:
            async for raw in connection:
                message = json.loads(raw)
                if message["type"] == "resumed":
                    return {"events": got, "in_order": ordered, "seconds": round(time.time() - started, 1),
                            "resumed": message["data"]}
                if "seq" in message:
                    ordered &= int(message["seq"]) == previous + 1
                    previous, got = int(message["seq"]), got + 1
                    if rate and got % 100 == 0:
                        await asyncio.sleep(100 / rate)
        return {"events": got, "closed": True}

    sampling = asyncio.ensure_future(watch.sample(3600))
    fast = await read(None)
    slow = await read(2000.0)
    sampling.cancel()
    return {"stored": events, "full_speed": fast, "at_2000_per_s": slow, **watch.figures()}


async def emit_depth(server, _seconds: float) -> dict:
    """eform.emit over WAMP with data nested 200, then 970 deep; then health and a resume from 0."""
    import aiohttp

    async with websockets.connect(f"ws://127.0.0.1:{server.port}/wamp", subprotocols=["wamp.2.json"]) as wamp:
        await wamp.send(json.dumps([1, "eform", {"roles": {"caller": {}}, "authmethods": ["ticket"]}]))
        await wamp.recv()
        await wamp.send(json.dumps([5, server.session, {}]))
        assert json.loads(await wamp.recv())[0] == 2
        answers = []
        for request, depth in ((1, 200), (2, 970)):  # 970: as deep as the attack of issue 13
            deep = '{"d":' * depth + "{}" + "}" * depth  # written by hand: json.dumps cannot
            await wamp.send(f'[48,{request},{{}},"eform.emit",["system_status",{{"component":"kiosk",'
                            '"status":"online","health_score":1,"details":' + deep + "}]]")
            answer = json.loads(await wamp.recv())
            answers.append(answer[:1] + answer[4:] if answer[0] == 8 else answer)
            if answer[0] == 3:
                break
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.session}"}) as http:
        async with http.get(f"http://127.0.0.1:{server.port}/api/websocket/health") as health:
            status = health.status
    url = f"ws://127.0.0.1:{server.port}/ws/events?sessionId={server.session}&since=0"
    async with websockets.connect(url) as connection:
        while True:
            message = json.loads(await connection.recv())
            if message["type"] == "resumed":
                break
    return {"emit_answers": answers, "health_status": status, "resume_from_0": message["data"]}


SCENARIOS = {"replies": replies, "control-pings": control_pings, "catch-up": catch_up, "emit-depth": emit_depth}


async def main(names: list[str], seconds: float, events: int) -> None:
    with tempfile.TemporaryDirectory(prefix="eformws-hostile-") as workdir:
        for name in names:
            server = await S.start_eformws(Path(workdir) / name, max_connections=1000)
            try:
                await asyncio.sleep(1)
                argument = events if name == "catch-up" else seconds
                result = await SCENARIOS[name](server, argument)
                print(json.dumps({"scenario": name, **result}), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=" | ".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each flood lasts")
    parser.add_argument("--events", type=int, default=50_000, help="catch-up: events stored first")
    arguments = parser.parse_args()
    unknown = set(arguments.scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenario {sorted(unknown)[0]!r}: {', '.join(SCENARIOS)}")
    asyncio.run(main(arguments.scenarios, arguments.seconds, arguments.events))
