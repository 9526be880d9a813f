"""The orchestrator's side of the load generators (one `bench.loadgen` process per
`per_process` connections, commands as JSON lines on their stdin), and a small keep-alive
HTTP/1.1 client for the trigger (standard library only, so the smoke test needs nothing
beyond the test extra)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Generator:
    """One load-generator process (a module of bench/ run with `python -m`, answering JSON
    command lines): `call(cmd)` -> its answer; `spawn(module)` starts one and waits for its
    `ready` line (kept in `hello`)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lock = asyncio.Lock()
        self.hello: dict = {}

    @classmethod
    async def spawn(cls, module: str = "bench.loadgen", wait: bool = True) -> Generator:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=1 << 26,
        )
        generator = cls(proc)
        if wait:
            await generator.ready()
        return generator

    async def ready(self) -> dict:
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {self.proc.pid} ended (exit {await self.proc.wait()})")
        self.hello = json.loads(line)
        return self.hello

    async def close(self) -> None:
        """`close`, then the process's end (killed after 10 s)."""
        try:
            await asyncio.wait_for(self.call({"cmd": "close"}), 30)
        except (TimeoutError, RuntimeError, ConnectionError):
            pass
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def call(self, cmd: dict) -> dict:
        async with self.lock:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {self.proc.pid} ended (exit {await self.proc.wait()})")
        return json.loads(line)


class Pool:
    """`size` connections split over ceil(size / per_process) generator processes."""

    def __init__(self, generators: list[Generator], shares: list[int]):
        self.generators = generators
        self.shares = shares
        self.uvloop = None

    @classmethod
    async def start(cls, size: int, per_process: int) -> Pool:
        count = max(1, math.ceil(size / per_process))
        shares = [size // count + (1 if k < size % count else 0) for k in range(count)]
        generators = [await Generator.spawn("bench.loadgen", wait=False) for _ in range(count)]
        pool = cls(generators, shares)
        hello = [await g.ready() for g in generators]
        pool.uvloop = all(h.get("uvloop") for h in hello)
        return pool

    @property
    def pids(self) -> list[int]:
        return [g.proc.pid for g in self.generators]

    async def each(self, make) -> list[dict]:
        return await asyncio.gather(*(g.call(make(k)) for k, g in enumerate(self.generators)))

    async def connect(self, server, *, rate: float, concurrency: int, proto: str = "ws", rooms: int = 0,
                      replay: int = 0, leave_default: bool = False, timeout: float = 60.0,
                      deflate: bool = False) -> dict:
        count = len(self.generators)
        firsts = [sum(self.shares[:k]) for k in range(count)]
        results = await self.each(lambda k: {
            "cmd": "connect", "host": "127.0.0.1", "port": server.port, "proto": proto, "n": self.shares[k],
            "first": firsts[k], "rate": rate / count, "concurrency": max(1, concurrency // count),
            "rooms": rooms, "replay": replay, "leave_default": leave_default, "session": server.session,
            "timeout": timeout, "deflate": deflate,
        })
        errors: dict = {}
        for r in results:
            for reason, n in r["errors"].items():
                errors[reason] = errors.get(reason, 0) + n
        durations = sorted(d for r in results for d in r["handshake_ms"])
        start = min(r["start"] for r in results)
        last = max(r["last_ready"] for r in results)
        return {
            "connected": sum(r["connected"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "errors": errors,
            "elapsed_s": last - start,
            "handshake_ms": durations,
        }

    async def wait(self, i: int, timeout: float) -> list[dict]:
        return await self.each(lambda k: {"cmd": "wait", "i": i, "timeout": timeout})

    async def reset(self) -> None:
        await self.each(lambda k: {"cmd": "reset"})

    async def collect(self, expect: int, timeout: float = 0.0) -> dict:
        """Delivery counts and latency samples of every generator. With `timeout`, first
        wait (polling) until every live connection has `expect` messages."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            results = await self.each(lambda k: {"cmd": "collect", "expect": expect})
            missing = sum(r["missing"] for r in results)
            if missing == 0 or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        samples = sorted(s for r in results for s in r["samples"])
        return {
            "samples": samples,
            "received": sum(r["received"] for r in results),
            "missing": missing,
            "dups": sum(r["dups"] for r in results),
            "misrouted": sum(r["misrouted"] for r in results),
            "alive": sum(r["alive"] for r in results),
            "lost": sum(r["lost"] for r in results),
            "closed_by_server": sum(r["closed_by_server"] for r in results),
            "wire_bytes": sum(r.get("wire_bytes", 0) for r in results),
        }

    async def stats(self) -> list[dict]:
        return await self.each(lambda k: {"cmd": "stats"})

    async def close(self) -> None:
        for g in self.generators:
            await g.close()


class Http:
    """One keep-alive HTTP/1.1 connection; `post(path, body)` -> (status, parsed JSON)."""

    def __init__(self, port: int, token: str | None = None):
        self.port = port
        self.token = token
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> tuple[int, object]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body, separators=(",", ":")).encode()
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            payload = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                payload += chunk[:-2]
        else:
            payload = await self.reader.read()
            self.writer.close()
            self.writer = None
        if headers.get("connection", "").lower() == "close" and self.writer is not None:
            self.writer.close()
            self.writer = None
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
