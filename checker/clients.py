"""The subscribers of `/ws/events`, each recording what it gets in arrival order: raw `websockets`
clients (steady, or dropping and resuming on a random gateway) and EformClient programs."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from checker.cluster import Process

NAMESPACE = "/ws/events"
OPEN_TIMEOUT = 5.0
INITIAL_DELAY = 0.05
MAX_DELAY = 1.0


def tag_of(envelope: dict) -> str | None:
    """The emitter's unique text in an event (system_status: message; locker: reason)."""
    data = envelope.get("data")
    if not isinstance(data, dict):
        return None
    tag = data.get("message", data.get("reason"))
    return tag if isinstance(tag, str) else None


def event_record(envelope: dict) -> dict:
    return {"id": envelope.get("id"), "seq": envelope.get("seq"), "epoch": envelope.get("epoch"),
            "type": envelope.get("type"), "tag": tag_of(envelope)}


def advance(cursor: tuple[int, str] | None, seq, epoch) -> tuple[int, str] | None:
    """The cursor after a message carrying (seq, epoch): forward within one epoch, or to
    another epoch; a seq already passed (a replayed event) leaves it."""
    if seq is None or epoch is None:
        return cursor
    position = (int(seq), epoch)
    if cursor is None or cursor[1] != epoch or position[0] > cursor[0]:
        return position
    return cursor


class RawSubscriber:
    """One subscriber: connects (and reconnects) until `stop()`. `kind` is "steady" (always
    its `home` gateway) or "flaky" (disconnects every 0.5-2.5 s, by a close or by aborting
    TCP, and reconnects to a random live gateway), with `?since=&epoch=` once it has a cursor."""

    def __init__(self, name: str, kind: str, session: str, live: Callable[[], list], home, rng: random.Random,
                 clock: Callable[[], float]):
        self.name = name
        self.kind = kind
        self.session = session
        self.live = live
        self.home = home
        self.rng = rng
        self.clock = clock
        self.records: list[dict] = []
        self.cursor: tuple[int, str] | None = None
        self.connections = 0
        self.failures = 0
        self.calm = False  # no more voluntary disconnects (quiescence)
        self.started = asyncio.Event()  # the first `connection` message came
        self._stopping = False
        self._ws = None
        self._task: asyncio.Task | None = None

    def _record(self, kind: str, **fields) -> None:
        fields["k"] = kind
        fields["t"] = round(self.clock(), 4)
        self.records.append(fields)

    def start(self) -> asyncio.Task:
        self._task = asyncio.ensure_future(self._run())
        return self._task

    def _target(self):
        if self.kind == "steady":
            return self.home
        gateways = self.live() or [self.home]
        return self.rng.choice(gateways)

    def _url(self, gateway) -> str:
        url = f"{gateway.ws}{NAMESPACE}?sessionId={self.session}"
        if self.cursor is not None:
            url += f"&since={self.cursor[0]}&epoch={self.cursor[1]}"
        return url

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            gateway = self._target()
            try:
                ws = await connect(self._url(gateway), open_timeout=OPEN_TIMEOUT, proxy=None, max_size=None,
                                   ping_interval=None, compression=None, close_timeout=2.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                self._record("fail", gw=gateway.name, error=f"{type(e).__name__}: {e}"[:200])
                await asyncio.sleep(self.rng.uniform(0, min(MAX_DELAY, INITIAL_DELAY * 2 ** attempt)))
                attempt += 1
                continue
            attempt = 0
            self.connections += 1
            conn = self.connections
            self._ws = ws
            self._record("open", c=conn, gw=gateway.name,
                         since=None if self.cursor is None else str(self.cursor[0]),
                         epoch=None if self.cursor is None else self.cursor[1])
            how: list[str] = []
            dropper = None
            if self.kind == "flaky" and not self.calm:
                dropper = asyncio.ensure_future(self._drop_later(ws, self.rng.uniform(0.5, 2.5), how))
            try:
                async for raw in ws:
                    self._received(conn, raw)
            except ConnectionClosed:
                pass
            finally:
                if dropper is not None:
                    dropper.cancel()
                self._ws = None
            received = ws.protocol.close_rcvd
            self._record("close", c=conn, code=received.code if received else 1006,
                         reason=received.reason if received else "", by=how[0] if how else "server")
            if not self._stopping:
                await asyncio.sleep(self.rng.uniform(0, INITIAL_DELAY))

    async def _drop_later(self, ws, delay: float, how: list[str]) -> None:
        await asyncio.sleep(delay)
        if self.calm or self._stopping:
            return
        if self.rng.random() < 0.5:
            how.append("self-close")
            await ws.close()
        else:
            how.append("self-abort")
            ws.transport.abort()

    def _received(self, conn: int, raw) -> None:
        try:
            message = json.loads(raw)
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            self._record("garbage", c=conn, text=str(raw)[:200])
            return
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if kind == "connection":
            self._record("connection", c=conn, seq=data.get("seq"), epoch=data.get("epoch"))
            self.cursor = advance(self.cursor, data.get("seq"), data.get("epoch"))
            self.started.set()
        elif kind == "resumed":
            self._record("resumed", c=conn, recovered=data.get("recovered"), count=data.get("count"),
                         seq=data.get("seq"), epoch=data.get("epoch"))
            if data.get("recovered") is False and data.get("seq") is not None:
                self.cursor = (int(data["seq"]), data.get("epoch"))  # a reset: the server's word
            else:
                self.cursor = advance(self.cursor, data.get("seq"), data.get("epoch"))
        elif kind in ("room_joined", "room_left", "pong"):
            pass
        elif kind == "error":
            self._record("error", c=conn, data=data)
        elif "seq" in message:
            self._record("event", c=conn, **event_record(message))
            self.cursor = advance(self.cursor, message.get("seq"), message.get("epoch"))
        else:
            self._record("other", c=conn, type=kind)

    def caught_up(self, target: tuple[int, str] | None) -> bool:
        if target is None:
            return True
        return self.cursor is not None and self.cursor[1] == target[1] and self.cursor[0] >= target[0]

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 3.0)
            except (asyncio.TimeoutError, Exception):
                ws.transport.abort()
        if self._task is not None and not self._task.done():
            # (A task this stop already cancelled is done: awaiting it again would raise
            # CancelledError here, which the teardown's second stop did.)
            try:
                await asyncio.wait_for(self._task, 8.0)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def summary(self) -> dict:
        return {"name": self.name, "kind": f"raw-{self.kind}", "connections": self.connections,
                "failed_attempts": self.failures, "records": self.records}


class EformSubscriber:
    """`python -m checker.python_client` through the random-backend proxy: the EformClient
    reconnects by itself; its callbacks are read back from the JSON lines it writes."""

    def __init__(self, name: str, url: str, session: str, workdir: Path, root: Path):
        self.name = name
        self.url = url
        self.session = session
        self.out = workdir / f"{name}.jsonl"
        self.root = root
        self.process = Process(name, workdir)
        self._records: list[dict] = []
        self._offset = 0
        self._partial = b""
        self.cursor: tuple[int, str] | None = None
        self.exit_code: int | None = None

    async def start(self) -> None:
        argv = [sys.executable, "-m", "checker.python_client", "--url", self.url, "--session", self.session,
                "--out", str(self.out)]
        env = {"PYTHONPATH": str(self.root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        await self.process.spawn(argv, env=env, cwd=self.root)

    def records(self) -> list[dict]:
        """Every line written so far (read on from where the last call stopped)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._records
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            self._records.append(record)
            kind = record["k"]
            if kind == "resumed" and record.get("recovered") is False and record.get("seq") is not None:
                self.cursor = (int(record["seq"]), record.get("epoch"))
            elif kind in ("event", "resumed", "connect"):
                self.cursor = advance(self.cursor, record.get("seq"), record.get("epoch"))
        return self._records

    @property
    def started(self) -> bool:
        return any(r["k"] == "connect" for r in self.records())

    def caught_up(self, target: tuple[int, str] | None) -> bool:
        self.records()
        if target is None:
            return True
        return self.cursor is not None and self.cursor[1] == target[1] and self.cursor[0] >= target[0]

    async def stop(self) -> None:
        """SIGTERM: the client closes (1000) and the program exits; SIGKILL if it does not."""
        self.exit_code = await self.process.terminate(timeout=8.0)

    def summary(self) -> dict:
        records = self.records()
        return {"name": self.name, "kind": "eform", "connections": sum(r["k"] == "connect" for r in records),
                "failed_attempts": sum(r["k"] == "disconnect" and not r.get("was_connected") for r in records),
                "exit_code": self.exit_code, "records": records}
