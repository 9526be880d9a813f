"""One WAMP load-generator process: raw WAMP v2 sessions (JSON serializer) on the WebSocket
client of bench/loadgen.py, as callee, callers, subscribers and publisher, against any router.

No WAMP library: a session is one small object; messages are built from byte templates and
parsed with the C JSON decoder. Driven, like bench/loadgen.py, by JSON commands on stdin
(one JSON line each on stdout); sessions are kept in named groups:

- `join`      {group, n, host, port, path, realm, ticket}: n sessions through HELLO (and,
              with a ticket, CHALLENGE/AUTHENTICATE) to WELCOME
- `register`  {group, procedure}: each session of the group registers it and echoes every
              INVOCATION's args back as its YIELD
- `calls`     {group, procedure, seconds, max_calls}: each session CALLs sequentially (the
              next CALL when the RESULT is in) until `seconds` or `max_calls` (per session)
- `subscribe` {group, topic}
- `publish`   {group, topic, seconds, max_publications, window, subscribers}: one session
              PUBLISHes with `acknowledge`, keeping at most `window` publications not yet
              received by every session of `subscribers` (a group of this process)
- `stats`, `close`

Latency: a call's is RESULT read minus CALL written; an event's is EVENT read minus the
publisher's `time.time()` carried in its args (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import resource
import time

from bench.loadgen import WsClient, run

HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE, ERROR = 1, 2, 3, 4, 5, 6, 8
PUBLISH, PUBLISHED, SUBSCRIBE, SUBSCRIBED, EVENT = 16, 17, 32, 33, 36
CALL, RESULT, REGISTER, REGISTERED, INVOCATION, YIELD = 48, 50, 64, 65, 68, 70
ROLES = {"caller": {}, "callee": {}, "publisher": {}, "subscriber": {}}
# what every CALL and publication carries besides its index and time (a locker event's size)
PAYLOAD = {"lockerId": "kiosk-1:12", "state": "open", "kioskId": "kiosk-1"}


def dumps(message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def summary(samples: list[float]) -> dict:
    """p50/p95/p99/max/mean of latencies in ms (nearest rank), from one process's samples."""
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(samples)

    def rank(p):
        return round(ordered[max(0, -(-len(ordered) * p // 100) - 1)], 3)

    return {"p50_ms": rank(50), "p95_ms": rank(95), "p99_ms": rank(99), "max_ms": round(ordered[-1], 3),
            "mean_ms": round(sum(ordered) / len(ordered), 3)}


class Session(WsClient):
    """One WAMP session. Until WELCOME (and between its requests) it decodes every message;
    in a run the group's role handler takes the hot messages first."""

    __slots__ = ("errors", "fail_reason", "gen", "last", "made", "on_hot", "pending", "ready", "request_id",
                 "sent_at", "session_id", "ticket")

    def __init__(self, gen: "WampGen", ticket: str | None):
        super().__init__()
        self.gen = gen
        self.ticket = ticket
        self.ready = asyncio.get_running_loop().create_future()  # WELCOME (True) or failure (False)
        self.pending: dict[int, asyncio.Future] = {}  # request id -> answer
        self.request_id = 0
        self.session_id = None
        self.fail_reason = None
        self.on_hot = None  # a run's handler: (session, payload, now) -> handled?
        self.sent_at = 0.0
        self.made = 0  # callers: CALLs sent in this run
        self.last = -1  # subscribers: the last publication index seen
        self.errors = 0

    def request(self) -> bytes:
        return self.gen.upgrade

    def next_id(self) -> int:
        self.request_id += 1
        return self.request_id

    def on_message(self, payload: bytes, now: float) -> None:
        hot = self.on_hot
        if hot is not None and hot(self, payload, now):
            return
        message = json.loads(payload)
        kind = message[0]
        if kind == WELCOME:
            self.session_id = message[1]
            if not self.ready.done():
                self.ready.set_result(True)
        elif kind == CHALLENGE:
            self.send_text(dumps([AUTHENTICATE, self.ticket or "", {}]))
        elif kind == ABORT:
            self._fail(f"abort {message[2]}")
        elif kind in (REGISTERED, SUBSCRIBED, PUBLISHED, RESULT):
            future = self.pending.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == ERROR:
            self.errors += 1
            self.gen.error_uris[message[4]] += 1
            future = self.pending.pop(message[2], None)
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == GOODBYE:
            self.send_text(dumps([GOODBYE, {}, "wamp.close.goodbye_and_out"]))

    def ask(self, message: list) -> asyncio.Future:
        """Send a request (its id is message[1]) and get the future of its answer."""
        future = asyncio.get_running_loop().create_future()
        self.pending[message[1]] = future
        self.send_text(dumps(message))
        return future

    def on_open(self) -> None:
        self.send_text(dumps([HELLO, self.gen.realm, {"roles": ROLES, "authmethods": self.gen.authmethods}]))

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.fail_reason = reason
            self.ready.set_result(False)
        else:
            self.gen.lost += 1
            self.gen.lost_reasons[reason] += 1
        for future in self.pending.values():
            if not future.done():
                future.set_result([ERROR, 0, 0, {}, "bench.lost"])
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def connection_lost(self, exc):
        if self.transport is not None:
            self.transport = None
            if not self.gen.closing:
                self._fail("lost" if exc is None else f"lost: {type(exc).__name__}")


class WampGen:
    def __init__(self):
        self.groups: dict[str, list[Session]] = {}
        self.error_uris: collections.Counter = collections.Counter()
        self.lost = 0
        self.lost_reasons: collections.Counter = collections.Counter()
        self.closing = False
        self.upgrade = b""
        self.realm = ""
        self.authmethods: list[str] = []

    # -- sessions ---------------------------------------------------------------------

    async def join(self, cmd: dict) -> dict:
        host, port, path = cmd.get("host", "127.0.0.1"), cmd["port"], cmd.get("path", "/")
        self.realm, ticket = cmd["realm"], cmd.get("ticket")
        self.authmethods = ["ticket"] if ticket else ["anonymous"]
        key = base64.b64encode(os.urandom(16)).decode()
        self.upgrade = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        errors: collections.Counter = collections.Counter()
        group = self.groups.setdefault(cmd["group"], [])

        async def one():
            session = Session(self, ticket)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: session, host, port), 10)
                ok = await asyncio.wait_for(asyncio.shield(session.ready), 10)
            except (TimeoutError, OSError) as e:
                errors[type(e).__name__] += 1
                return
            if ok:
                group.append(session)
            else:
                errors[session.fail_reason or "failed"] += 1

        await asyncio.gather(*(one() for _ in range(cmd["n"])))
        return {"joined": len(group), "errors": dict(errors)}

    async def _each(self, group: str, make) -> list:
        sessions = self.groups[group]
        answers = await asyncio.wait_for(asyncio.gather(*(s.ask(make(s)) for s in sessions)), 10)
        return [a for a in answers if a[0] == ERROR]

    async def register(self, cmd: dict) -> dict:
        failed = await self._each(cmd["group"], lambda s: [REGISTER, s.next_id(), {}, cmd["procedure"]])
        for s in self.groups[cmd["group"]]:
            s.on_hot = _callee
        return {"ok": not failed, "errors": [f[4] for f in failed]}

    async def subscribe(self, cmd: dict) -> dict:
        failed = await self._each(cmd["group"], lambda s: [SUBSCRIBE, s.next_id(), {}, cmd["topic"]])
        return {"ok": not failed, "errors": [f[4] for f in failed]}

    # -- calls ------------------------------------------------------------------------

    async def calls(self, cmd: dict) -> dict:
        """Each session of the group CALLs, one at a time, until `seconds` or `max_calls`."""
        sessions = self.groups[cmd["group"]]
        run = CallRun(cmd["procedure"], cmd["seconds"], cmd.get("max_calls") or 0, len(sessions))
        errors0 = sum(s.errors for s in sessions)
        for s in sessions:
            s.on_hot = run.on_message
            s.pending.clear()
            s.made = 0
        for s in sessions:
            run.call(s, time.time())
        try:
            await asyncio.wait_for(run.done, cmd["seconds"] + 30)
        except TimeoutError:
            pass
        for s in sessions:
            s.on_hot = None
        elapsed = run.last - run.start
        return {
            "callers": len(sessions), "calls": run.completed, "errors": sum(s.errors for s in sessions) - errors0,
            "error_uris": dict(self.error_uris), "unanswered": run.active, "elapsed_s": round(elapsed, 4),
            "calls_per_s": round(run.completed / elapsed, 1) if elapsed > 0 else None, **summary(run.samples),
            "lost": self.lost,
        }

    # -- publications -----------------------------------------------------------------

    async def publish(self, cmd: dict) -> dict:
        publisher = self.groups[cmd["group"]][0]
        subscribers = self.groups[cmd["subscribers"]]
        run = PublishRun(publisher, cmd["topic"], cmd["seconds"], cmd.get("max_publications") or 0,
                         cmd.get("window", 10), len(subscribers))
        for s in subscribers:
            s.on_hot = run.on_event
            s.last = -1
        publisher.on_hot = run.on_ack
        run.top_up(time.time())
        try:
            await asyncio.wait_for(run.done, cmd["seconds"] + 30)
        except TimeoutError:
            pass
        await asyncio.sleep(0.2)  # a late duplicate would show here
        for s in subscribers:
            s.on_hot = None
        publisher.on_hot = None
        elapsed = run.last - run.start
        expected = run.sent * len(subscribers)
        return {
            "subscribers": len(subscribers), "publications": run.sent, "acknowledged": run.acked,
            "errors": run.errors, "window": run.window, "expected": expected, "delivered": run.delivered,
            "missing": expected - run.delivered, "dups": run.dups, "elapsed_s": round(elapsed, 4),
            "events_per_s": round(run.delivered / elapsed, 1) if elapsed > 0 else None,
            "publications_per_s": round(run.sent / elapsed, 1) if elapsed > 0 else None,
            **summary(run.samples), "lost": self.lost,
        }

    # -- process ----------------------------------------------------------------------

    def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu_s": usage.ru_utime + usage.ru_stime, "lost": self.lost, "lost_reasons": dict(self.lost_reasons),
                "sessions": {name: len(group) for name, group in self.groups.items()}}

    async def close(self) -> dict:
        self.closing = True
        for group in self.groups.values():
            for s in group:
                if s.transport is not None:
                    s.transport.abort()
        await asyncio.sleep(0)
        self.groups = {}
        return {"ok": True}


def _callee(session: Session, payload: bytes, now: float) -> bool:
    """INVOCATION [68, request, registration, details, args(, kwargs)] -> YIELD [70, request, {}, args]."""
    if not payload.startswith(b"[68,"):
        return False
    message = json.loads(payload)
    session.send_text(dumps([YIELD, message[1], {}, *message[4:]]))
    return True


class CallRun:
    """Sequential CALLs on a set of sessions: the next one is sent from the RESULT's read."""

    def __init__(self, procedure: str, seconds: float, max_calls: int, sessions: int):
        self.head = b"[48,"
        self.tail = ("," + json.dumps({}) + "," + json.dumps(procedure) + ",[").encode()
        self.payload = dumps(PAYLOAD)
        self.start = time.time()
        self.deadline = self.start + seconds
        self.max_calls = max_calls
        self.completed = 0
        self.active = sessions
        self.samples: list[float] = []
        self.last = self.start
        self.done = asyncio.get_running_loop().create_future()

    def call(self, session: Session, now: float) -> None:
        if now >= self.deadline or (self.max_calls and session.made >= self.max_calls) or session.transport is None:
            self.active -= 1
            if self.active == 0 and not self.done.done():
                self.done.set_result(True)
            return
        session.request_id += 1
        session.made += 1
        session.sent_at = time.time()
        session.send_text(b"%s%d%s%d,%s]]" % (self.head, session.request_id, self.tail, session.request_id,
                                              self.payload))

    def on_message(self, session: Session, payload: bytes, now: float) -> bool:
        if payload.startswith(b"[50,"):
            self.completed += 1
            self.samples.append((now - session.sent_at) * 1000.0)
        elif payload.startswith(b"[8,48,"):
            session.errors += 1
            session.gen.error_uris[json.loads(payload)[4]] += 1
        else:
            return False
        self.last = now
        self.call(session, now)
        return True


class PublishRun:
    """Acknowledged PUBLISHes, at most `window` of them not yet received by every subscriber."""

    def __init__(self, publisher: Session, topic: str, seconds: float, max_publications: int, window: int,
                 subscribers: int):
        self.publisher = publisher
        self.head = b"[16,"
        self.tail = ',{"acknowledge":true},%s,[' % json.dumps(topic)
        self.tail = self.tail.encode()
        self.payload = dumps(PAYLOAD)
        self.subscribers = subscribers
        self.window = window
        self.start = time.time()
        self.deadline = self.start + seconds
        self.max_publications = max_publications
        self.sent = self.acked = self.errors = self.completed = self.delivered = self.dups = 0
        self.received: collections.Counter = collections.Counter()  # publication index -> subscribers reached
        self.samples: list[float] = []
        self.last = self.start
        self.stopped = False
        self.done = asyncio.get_running_loop().create_future()

    def top_up(self, now: float) -> None:
        while not self.stopped and self.sent - self.completed < self.window:
            if now >= self.deadline or (self.max_publications and self.sent >= self.max_publications) \
                    or self.publisher.transport is None:
                self.stopped = True
                break
            i = self.sent
            self.sent += 1
            self.publisher.request_id += 1
            self.publisher.send_text(b"%s%d%s%d,%r,%s]]" % (self.head, self.publisher.request_id, self.tail, i,
                                                            time.time(), self.payload))
        if self.stopped and self.completed == self.sent and not self.done.done():
            self.done.set_result(True)

    def on_ack(self, session: Session, payload: bytes, now: float) -> bool:
        if payload.startswith(b"[17,"):
            self.acked += 1
            return True
        if payload.startswith(b"[8,16,"):
            self.errors += 1
            session.gen.error_uris[json.loads(payload)[4]] += 1
            return True
        return False

    def on_event(self, session: Session, payload: bytes, now: float) -> bool:
        if not payload.startswith(b"[36,"):
            return False
        args = json.loads(payload)[4]
        i = args[0]
        if i <= session.last:
            self.dups += 1
            return True
        session.last = i
        self.delivered += 1
        self.samples.append((now - args[1]) * 1000.0)
        count = self.received[i] + 1
        if count >= self.subscribers:
            del self.received[i]
            self.completed += 1
            self.last = now
            self.top_up(now)
        else:
            self.received[i] = count
        return True


def main() -> None:
    def commands():
        gen = WampGen()
        return {"join": gen.join, "register": gen.register, "subscribe": gen.subscribe, "calls": gen.calls,
                "publish": gen.publish, "stats": lambda cmd: gen.stats(), "close": lambda cmd: gen.close()}

    run(commands)


if __name__ == "__main__":
    main()
