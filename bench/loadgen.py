"""One load-generator process: holds many WebSocket connections on asyncio (uvloop when it
is installed) with a minimal RFC 6455 client of its own (no library per connection: a
connection costs one small object and its transport), driven by JSON commands on stdin,
answering one JSON line per command on stdout.

Two client protocols, same measurements:

- `ws`: eformws and the floor. `?sessionId=` on the URL, then `connection` and
  `room_joined` (and, when asked, N replayed events, a `join_room` and a `leave_room`).
- `eio`: python-socketio (the peer), raw Engine.IO 4 / Socket.IO 5 over one WebSocket
  (`/socket.io/?EIO=4&transport=websocket`): `0{open}`, `40<ns>,` -> `40<ns>,{sid}`, events
  as `42<ns>,["name",data]`, pings `2` answered `3`. No python-socketio client objects.

Latency: every bench message carries `"t": <epoch seconds>` (set by the process that
triggered it, just before triggering) and `"i": <index>`; a receipt records
`time.time() - t` (one clock read per read from the socket), and sets bit `i` of the
connection's mask, so a second copy of a message is counted as a duplicate.

Commands (one JSON object a line): connect, wait, collect, reset, stats, close.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import random
import re
import resource
import struct
import sys
import time
import zlib

try:  # uvloop keeps each connection cheaper; plain asyncio works too (CI smoke run)
    import uvloop
except ImportError:  # pragma: no cover - depends on the bench extra
    uvloop = None
if os.environ.get("BENCH_NO_UVLOOP"):
    uvloop = None

T_RE = re.compile(rb'"t":([0-9.eE+-]+)')
I_RE = re.compile(rb'"i":(\d+)')

GREETING, READY, DEAD = 0, 1, 2


def _mask(payload: bytes) -> bytes:
    """A client frame must be masked: the key, then the payload XOR the key repeated (as
    one big-integer XOR, not a loop over bytes: the WAMP clients send many frames)."""
    key = random.getrandbits(32).to_bytes(4, "big")
    n = len(payload)
    if not n:
        return key
    stream = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return key + (int.from_bytes(payload, "big") ^ stream).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _mask(payload)


class WsClient(asyncio.Protocol):
    """The client side of one WebSocket: sends `self.request()` (the upgrade) on connect,
    checks the 101, parses the server's frames (answering pings) and hands each message to
    `on_message(payload, now)`; a refused upgrade or a close frame goes to `_fail(reason)`
    (a close frame first to `on_close_frame()`), a completed upgrade to `on_open()`.
    Subclasses give `request`, `on_message` and `_fail`. A message with RSV1 set (permessage-
    deflate, negotiated with no context takeover by a request that offers it) is inflated."""

    __slots__ = ("buf", "frag", "transport", "upgraded")

    def __init__(self):
        self.transport = None
        self.upgraded = False
        self.buf = bytearray()
        self.frag = None

    def request(self) -> bytes:
        raise NotImplementedError

    def on_message(self, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def on_open(self) -> None:
        pass

    def on_close_frame(self) -> None:
        pass

    def _fail(self, reason: str) -> None:
        raise NotImplementedError

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request())

    def send_text(self, text: str | bytes):
        if isinstance(text, str):
            text = text.encode()
        self.transport.write(client_frame(0x1, text))

    def data_received(self, data):
        now = time.time()
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self._fail("bad handshake")
                return
            head = bytes(self.buf[:end])
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self._fail("http " + status.decode("latin-1")[9:12])
                return
            self.upgraded = True
            rest = self.buf[end + 4:]
            self.buf = bytearray()
            self.on_open()
            if not rest:
                return
            data = bytes(rest)
        buf = self.buf
        if buf:
            buf += data
            view = buf
        else:
            view = data
        pos = 0
        size = len(view)
        while size - pos >= 2:
            b0 = view[pos]
            length = view[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2:pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(view[pos + head:end])
            pos = end
            opcode = b0 & 0x0F
            if b0 & 0x40:  # RSV1: deflated, each message on its own (a whole message: not fragmented here)
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            if opcode in (1, 2):
                if b0 & 0x80:
                    self.on_message(payload, now)
                else:
                    self.frag = payload
            elif opcode == 0:
                self.frag = (self.frag or b"") + payload
                if b0 & 0x80:
                    payload, self.frag = self.frag, None
                    self.on_message(payload, now)
            elif opcode == 9:  # ping: answer with the same payload
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 8:
                self.on_close_frame()
                self.transport.write(client_frame(0x8, payload[:2]))
                self._fail("closed by server: " + payload[2:].decode("utf-8", "replace"))
                return
        if pos < size:
            self.buf = bytearray(view[pos:])
        elif buf:
            self.buf = bytearray()


class Conn(WsClient):
    __slots__ = (
        "count",
        "eio_ack",
        "eio_open",
        "fail_reason",
        "g",
        "gen",
        "greet",
        "join_pending",
        "leave_pending",
        "mask",
        "ready_at",
        "ready_future",
        "replay_left",
        "room",
        "started",
        "state",
    )

    def __init__(self, gen: Generator, g: int, room: str | None):
        super().__init__()
        self.gen = gen
        self.g = g  # global index among all generator processes
        self.room = room
        self.state = GREETING
        self.mask = 0
        self.count = 0
        self.greet = 0  # connection + room_joined seen (of 2)
        self.replay_left = gen.replay
        self.join_pending = room is not None
        self.leave_pending = room is not None and gen.leave_default
        self.ready_at = None
        self.started = time.time()
        self.ready_future = asyncio.get_running_loop().create_future()
        self.fail_reason = None
        self.eio_open = False
        self.eio_ack = False

    # -- transport ------------------------------------------------------------------

    def request(self) -> bytes:
        return self.gen.request

    def data_received(self, data):
        self.gen.wire_bytes += len(data)
        super().data_received(data)

    def connection_lost(self, exc):
        was = self.state
        self.state = DEAD
        if was == READY:
            self.gen.lost += 1
        self._fail("closed before ready" if exc is None else f"lost: {type(exc).__name__}")

    def _fail(self, reason: str):
        if not self.ready_future.done():
            self.fail_reason = reason
            self.ready_future.set_result(False)
        if self.transport is not None and self.state != DEAD:
            self.state = DEAD
            self.transport.abort()

    def on_close_frame(self):
        if self.state == READY:
            self.gen.closed_by_server += 1

    # -- messages -------------------------------------------------------------------

    def on_message(self, payload: bytes, now: float):
        gen = self.gen
        if gen.eio:
            if payload[:1] == b"2":  # Engine.IO ping
                self.send_text(b"3")
                return
            if payload[:1] == b"0":  # Engine.IO open
                self.eio_open = True
                self.send_text(gen.eio_connect)
                return
            if payload.startswith(gen.eio_ack_prefix):
                self.eio_ack = True
                self._maybe_ready()
                return
            if not payload.startswith(gen.eio_event_prefix):
                return
            if self.state == READY:
                self._bench(payload, now)
                return
            try:
                name, data = json.loads(payload[len(gen.eio_event_prefix):])
            except ValueError:
                return
            self._greeting(name, data)
            return
        if self.state == READY:
            self._bench(payload, now)
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        self._greeting(message.get("type"), message.get("data"))

    def _greeting(self, kind, data):
        if kind == "connection" and self.greet == 0:
            self.greet = 1
        elif kind == "room_joined" and isinstance(data, dict):
            room = data.get("room")
            if self.greet == 1 and room == self.gen.default_room:
                self.greet = 2
                if self.room is not None:
                    self._send_event("join_room", {"room": self.room})
            elif self.join_pending and room == self.room:
                self.join_pending = False
                if self.leave_pending:
                    self._send_event("leave_room", {"room": self.gen.default_room})
        elif kind == "room_left":
            self.leave_pending = False
        elif kind == "error":
            self._fail("error reply: " + json.dumps(data)[:80])
            return
        elif self.greet == 2 and self.replay_left > 0:
            self.replay_left -= 1
        self._maybe_ready()

    def _send_event(self, name: str, data: dict):
        if self.gen.eio:
            self.send_text(self.gen.eio_event_prefix + json.dumps([name, data]).encode())
        else:
            self.send_text(json.dumps({"type": name, "data": data}))

    def _maybe_ready(self):
        if (
            self.greet == 2 and self.replay_left <= 0 and not self.join_pending and not self.leave_pending
            and (self.eio_ack or not self.gen.eio) and self.state == GREETING
        ):
            self.state = READY
            self.ready_at = time.time()
            if not self.ready_future.done():
                self.ready_future.set_result(True)

    def _bench(self, payload: bytes, now: float):
        gen = self.gen
        found = I_RE.search(payload)
        if found is None:
            gen.other += 1
            return
        i = int(found.group(1))
        bit = 1 << i
        if self.mask & bit:
            gen.dups += 1
            return
        self.mask |= bit
        self.count += 1
        if gen.rooms and i % gen.rooms != self.g % gen.rooms:
            gen.misrouted += 1
        t = T_RE.search(payload)
        if t is not None:
            gen.samples.append((now - float(t.group(1))) * 1000.0)
        per = gen.per_index
        per[i] += 1
        waiter = gen.waiters.get(i)
        if waiter is not None and per[i] >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(True)


class Generator:
    def __init__(self):
        self.conns: list[Conn] = []
        self.samples: list[float] = []
        self.per_index: collections.Counter = collections.Counter()
        self.waiters: dict[int, tuple[int, asyncio.Future]] = {}
        self.dups = 0
        self.misrouted = 0
        self.other = 0
        self.lost = 0
        self.closed_by_server = 0
        self.rooms = 0
        self.replay = 0
        self.leave_default = False
        self.eio = False
        self.default_room = "locker_updates"
        self.wire_bytes = 0  # bytes read from the servers since the last reset (frames as they came)

    def alive(self) -> list[Conn]:
        return [c for c in self.conns if c.state == READY]

    def configure(self, cmd: dict) -> None:
        self.host, self.port = cmd["host"], cmd["port"]
        self.eio = cmd.get("proto", "ws") == "eio"
        ns = cmd.get("ns", "/ws/lockers")
        self.default_room = cmd.get("default_room", "locker_updates")
        self.rooms = cmd.get("rooms", 0)
        self.replay = cmd.get("replay", 0)
        self.leave_default = cmd.get("leave_default", False)
        session = cmd.get("session", "bench")
        if self.eio:
            path = f"/socket.io/?EIO=4&transport=websocket&sessionId={session}"
            self.eio_connect = f"40{ns},".encode()
            self.eio_ack_prefix = f"40{ns},".encode()
            self.eio_event_prefix = f"42{ns},".encode()
        else:
            path = f"{ns}?sessionId={session}"
        key = base64.b64encode(os.urandom(16)).decode()
        offer = ("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                 "client_no_context_takeover\r\n") if cmd.get("deflate") else ""
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        ).encode()

    async def _open(self, g: int, timeout: float) -> Conn | str:
        loop = asyncio.get_running_loop()
        room = f"kiosk-{g % self.rooms}" if self.rooms else None
        conn = Conn(self, g, room)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, self.host, self.port), timeout)
        except (TimeoutError, OSError) as e:
            return f"connect: {type(e).__name__}"
        self.conns.append(conn)
        try:
            ok = await asyncio.wait_for(asyncio.shield(conn.ready_future), timeout)
        except TimeoutError:
            conn._fail("timeout before ready")
            return "timeout before ready"
        return conn if ok else (conn.fail_reason or "failed")

    async def connect(self, cmd: dict) -> dict:
        """Open `n` connections (global indexes first..first+n-1) at `rate` per second
        (0: as fast as `concurrency` in-flight handshakes allow)."""
        self.configure(cmd)
        n, first = cmd["n"], cmd.get("first", 0)
        rate, concurrency = cmd.get("rate", 0), max(1, cmd.get("concurrency", 100))
        timeout = cmd.get("timeout", 30.0)
        errors: collections.Counter = collections.Counter()
        durations: list[float] = []
        gate = asyncio.Semaphore(concurrency)
        start = time.time()
        last_ready = start

        async def one(g: int):
            nonlocal last_ready
            async with gate:
                t0 = time.time()
                result = await self._open(g, timeout)
            if isinstance(result, str):
                errors[result] += 1
            else:
                durations.append((result.ready_at - t0) * 1000.0)
                last_ready = max(last_ready, result.ready_at)

        tasks = []
        for k in range(n):
            if rate:
                delay = start + k / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(first + k)))
        await asyncio.gather(*tasks)
        return {
            "connected": len(durations),
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "start": start,
            "last_ready": last_ready,
            "handshake_ms": durations,
        }

    async def wait(self, cmd: dict) -> dict:
        """Until every live connection has message `i` (or `timeout`)."""
        i = cmd["i"]
        expected = cmd.get("expected")
        if expected is None:
            expected = len(self.alive())
        if self.per_index[i] < expected:
            future = asyncio.get_running_loop().create_future()
            self.waiters[i] = (expected, future)
            try:
                await asyncio.wait_for(future, cmd.get("timeout", 10.0))
            except TimeoutError:
                pass
            finally:
                self.waiters.pop(i, None)
        return {"i": i, "got": self.per_index[i], "expected": expected}

    def collect(self, cmd: dict) -> dict:
        """Samples and delivery counts; `expect`: messages each live connection should have."""
        expect = cmd.get("expect", 0)
        alive = self.alive()
        missing = sum(max(0, expect - c.count) for c in alive)
        return {
            "samples": self.samples,
            "received": sum(c.count for c in alive),
            "missing": missing,
            "dups": self.dups,
            "misrouted": self.misrouted,
            "alive": len(alive),
            "lost": self.lost,
            "closed_by_server": self.closed_by_server,
            "wire_bytes": self.wire_bytes,
        }

    def reset(self) -> dict:
        self.wire_bytes = 0
        self.samples = []
        self.per_index = collections.Counter()
        self.dups = self.misrouted = self.other = 0
        for c in self.conns:
            c.mask = 0
            c.count = 0
        return {"ok": True}

    def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"alive": len(self.alive()), "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}

    async def close(self) -> dict:
        for c in self.conns:
            if c.transport is not None and c.state != DEAD:
                c.transport.abort()
        await asyncio.sleep(0)
        self.conns = []
        return {"ok": True}


async def serve(commands: dict) -> None:
    """Answer the JSON command lines on stdin, one JSON line each on stdout: `commands` maps
    a command's name to a function of the command (a dict or an awaitable of one); `close`
    ends the process after its answer. The first line out says the process is ready."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def reply(obj: dict):
        out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        out.flush()

    reply({"ready": True, "pid": os.getpid(), "uvloop": uvloop is not None})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["cmd"]
        handler = commands.get(op)
        if handler is None:
            reply({"error": f"unknown command {op}"})
            continue
        answer = handler(cmd)
        reply(await answer if asyncio.iscoroutine(answer) else answer)
        if op == "close":
            break


def run(commands) -> None:
    """`serve(commands())` on uvloop when it is installed, else the stock loop."""
    async def main():
        await serve(commands())

    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> None:
    def commands():
        gen = Generator()
        return {"connect": gen.connect, "wait": gen.wait, "collect": gen.collect, "reset": lambda cmd: gen.reset(),
                "stats": lambda cmd: gen.stats(), "close": lambda cmd: gen.close()}

    run(commands)


if __name__ == "__main__":
    main()
