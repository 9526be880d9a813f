"""The producers: each posts structured events to one gateway at a steady rate, every logical
event under an Idempotency-Key of its own (kept across retries), and records every attempt."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

from checker.cluster import API_TOKEN

PATH = "/api/websocket/events"
REQUEST_TIMEOUT = 3.0  # a paused gateway answers after SIGCONT; a retry meanwhile is safe
MAX_ATTEMPTS = 40
EVENT_DEADLINE = 20.0  # seconds from the first attempt: then the event is given up (unconfirmed)
RETRY_STATUSES = frozenset({503})


class HttpError(Exception):
    """No well-formed answer: the connection failed, closed or timed out."""


class Http:
    """One keep-alive HTTP/1.1 connection to a loopback port, opened again after any error."""

    def __init__(self, port: int):
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict, bytes]:
        try:
            return await asyncio.wait_for(self._post(path, body, headers), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            self.close()
            raise HttpError(f"{type(e).__name__}: {e}") from None

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        await self._writer.drain()
        reader = self._reader
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.decode("latin-1").split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        answer_headers: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        if answer_headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await reader.readexactly(int(answer_headers.get("content-length", "0")))
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, data


class Emitter:
    """Posts to `gateway` about `rate` events a second until stopped. `events` holds one entry
    per logical event: its key and tag (the same unique text, also in the event's data), the
    attempts, and the envelope of the first 201 (then `accepted`)."""

    def __init__(self, name: str, gateway, run_id: str, rate: float, rng: random.Random, clock: Callable[[], float]):
        self.name = name
        self.gateway = gateway
        self.run_id = run_id
        self.rate = rate
        self.rng = rng
        self.clock = clock
        self.http = Http(gateway.port)
        self.events: list[dict] = []

    def _body(self, tag: str) -> tuple[str, bytes]:
        if self.rng.random() < 0.5:
            kind, data = "system_status", {"component": "gateway", "status": "online", "health_score": 50,
                                           "message": tag}
        else:
            kind, data = "locker_state_changed", {"lockerId": "k1:1", "oldState": "closed", "newState": "open",
                                                  "kioskId": "k1", "reason": tag}
        return kind, json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while not stop.is_set():
            await self._emit(n)
            n += 1
            next_at += self.rng.uniform(0.5, 1.5) / self.rate
            delay = next_at - loop.time()
            if delay <= 0:
                next_at = loop.time()
                continue
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        self.http.close()

    async def _emit(self, n: int) -> None:
        key = f"{self.run_id}-{self.name}-{n}"
        kind, body = self._body(key)
        event = {"key": key, "tag": key, "type": kind, "emitter": self.name, "gateway": self.gateway.name,
                 "attempts": [], "accepted": False, "envelope": None, "error": None}
        self.events.append(event)
        headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json", "Idempotency-Key": key}
        first = self.clock()
        for attempt in range(MAX_ATTEMPTS):
            t = self.clock()
            try:
                status, answer_headers, data = await self.http.post(PATH, body, headers, REQUEST_TIMEOUT)
            except HttpError as e:
                event["attempts"].append({"t": round(t, 4), "outcome": str(e)[:120]})
            else:
                replayed = answer_headers.get("idempotent-replayed") == "true"
                event["attempts"].append({"t": round(t, 4), "outcome": status, "replayed": replayed})
                if status == 201:
                    try:
                        envelope = json.loads(data)
                        stored = {"id": envelope["id"], "seq": envelope["seq"], "epoch": envelope["epoch"],
                                  "replayed": replayed}
                    except (ValueError, KeyError, TypeError):
                        event["error"] = f"201 with an unreadable body: {data[:200]!r}"
                        return
                    event["accepted"] = True
                    event["envelope"] = stored
                    return
                if status not in RETRY_STATUSES:
                    event["error"] = f"{status}: {data[:200].decode('utf-8', 'replace')}"
                    return
            if self.clock() - first > EVENT_DEADLINE:
                break
            await asyncio.sleep(self.rng.uniform(0, min(0.5, 0.02 * 2 ** attempt)))
