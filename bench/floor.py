"""The floor: the least a Python WebSocket server can do for the same traffic. Bare
Autobahn|Twisted on the default reactor, the same URL shape (`/ws/lockers?sessionId=`,
any id accepted, no lookup), the same greeting (`connection`, `room_joined`), rooms
(`join_room` / `leave_room`), and `POST /api/websocket/broadcast` with eformws's body:
each broadcast is serialized once and framed once (`factory.prepareMessage`) and handed
to every recipient with `sendPreparedMessage`. Pings as eformws's defaults (25 s / 10 s),
no compression. Nothing else: no auth store, no validation, no bus, no logging.

Options: `--replay K` sends K canned events after the greeting (for the connect scenario,
as eformws replays its stored events); `--workers N --redis URL` runs N processes on one
listening socket that deliver to each other through Redis pub/sub (every broadcast is
published, every process delivers what it reads: once each). Standard input takes
`emit RATE SECONDS ROOMS` lines (an in-process event loop, the floor of `emit`), answered
with one JSON line on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, stdio, task
from twisted.protocols.basic import LineReceiver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

NAMESPACE = "/ws/lockers"
DEFAULT_ROOM = "locker_updates"
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value) -> bytes:
    return _encoder.encode(value).encode("utf-8")


def js_timestamp(at: float | None = None) -> str:
    at = time.time() if at is None else at
    whole = int(at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((at - whole) * 1000):03d}Z"


class FloorProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        self.rooms = set()
        # any sessionId (or none) is accepted

    def onOpen(self):
        factory = self.factory
        self.id = str(uuid.uuid4())
        factory.clients.add(self)
        self.sendMessage(dumps({"type": "connection", "data": {
            "connectionId": self.id, "namespace": NAMESPACE, "authenticated": True,
            "timestamp": js_timestamp()}, "timestamp": js_timestamp()}))
        factory.join(self, DEFAULT_ROOM)
        self.sendMessage(dumps({"type": "room_joined", "data": {"room": DEFAULT_ROOM}, "timestamp": js_timestamp()}))
        for frame in factory.replay:
            self.sendPreparedMessage(frame)

    def onMessage(self, payload, isBinary):
        try:
            message = json.loads(payload)
            kind = message.get("type")
            data = message.get("data") or {}
            room = message.get("room", data.get("room"))
        except (ValueError, AttributeError):
            return
        if kind == "join_room" and isinstance(room, str):
            self.factory.join(self, room)
            self.sendMessage(dumps({"type": "room_joined", "data": {"room": room}, "timestamp": js_timestamp()}))
        elif kind == "leave_room" and isinstance(room, str):
            self.factory.leave(self, room)
            self.sendMessage(dumps({"type": "room_left", "data": {"room": room}, "timestamp": js_timestamp()}))

    def onClose(self, wasClean, code, reason):
        factory = self.factory
        factory.clients.discard(self)
        for room in getattr(self, "rooms", ()):
            members = factory.rooms.get(room)
            if members is not None:
                members.discard(self)
        self.rooms = set()


class FloorFactory(WebSocketServerFactory):
    protocol = FloorProtocol

    def __init__(self, replay: int = 0):
        super().__init__()
        self.setProtocolOptions(autoPingInterval=25.0, autoPingTimeout=10.0,
                                maxFramePayloadSize=65536, maxMessagePayloadSize=65536)
        self.clients: set = set()
        self.rooms: dict[str, set] = {}
        self.replay = [
            self.prepareMessage(dumps({
                "id": str(uuid.uuid4()), "seq": str(k + 1), "type": "locker_state_changed",
                "timestamp": js_timestamp(), "namespace": NAMESPACE, "room": DEFAULT_ROOM, "version": "1.0.0",
                "data": {"lockerId": f"kiosk-1:{k}", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"},
            }))
            for k in range(replay)
        ]

    def join(self, client, room):
        self.rooms.setdefault(room, set()).add(client)
        client.rooms.add(room)

    def leave(self, client, room):
        client.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.discard(client)

    def deliver(self, envelope: dict, room: str | None) -> int:
        """Serialize once, frame once, send to every recipient."""
        frame = self.prepareMessage(dumps(envelope))
        recipients = self.clients if room is None else self.rooms.get(room, ())
        for client in list(recipients):
            client.sendPreparedMessage(frame)
        return len(recipients)


def envelope_of(body: dict) -> dict:
    envelope = {"type": body["event"], "data": body["data"], "timestamp": js_timestamp(), "namespace": body["namespace"]}
    if body.get("room") is not None:
        envelope["room"] = body["room"]
    return envelope


class Broadcast(Resource):
    isLeaf = True

    def __init__(self, factory: FloorFactory, publish=None):
        super().__init__()
        self.factory = factory
        self.publish = publish  # with workers: through Redis, delivered by every process

    def render_POST(self, request):
        body = json.loads(request.content.read())
        envelope = envelope_of(body)
        request.setHeader(b"Content-Type", b"application/json")
        if self.publish is None:
            delivered = self.factory.deliver(envelope, body.get("room"))
            return dumps({"success": True, "delivered": delivered, "timestamp": js_timestamp()})

        def done(_):
            request.write(dumps({"success": True, "timestamp": js_timestamp()}))
            request.finish()

        self.publish(dumps({"envelope": envelope, "room": body.get("room")})).addCallback(done)
        return NOT_DONE_YET


def build_site(factory: FloorFactory, publish=None) -> Site:
    root = Resource()
    ws = Resource()
    root.putChild(b"ws", ws)
    ws.putChild(b"lockers", WebSocketResource(factory))
    api = Resource()
    root.putChild(b"api", api)
    websocket = Resource()
    api.putChild(b"websocket", websocket)
    websocket.putChild(b"broadcast", Broadcast(factory, publish))
    return Site(root)


class Control(LineReceiver):
    """`emit RATE SECONDS ROOMS`: send RATE room messages a second for SECONDS, to room
    kiosk-(k % ROOMS), each framed once, with `t` and `i` in data (the floor of `emit`)."""

    delimiter = b"\n"

    def __init__(self, factory: FloorFactory):
        self.factory = factory

    def lineReceived(self, line):
        parts = line.decode().split()
        if parts and parts[0] == "emit":
            rate, seconds, rooms = float(parts[1]), float(parts[2]), int(parts[3])
            emit_loop(self.factory.deliver, rate, seconds, rooms).addCallback(
                lambda result: self.sendLine(json.dumps(result).encode()))


def emit_loop(send, rate: float, seconds: float, rooms: int):
    """Call `send(envelope, room)` RATE times a second (ticks of 5 ms) for SECONDS; fires
    with the counts. Used by the floor; eformws's emit host has its own, around `emit`."""
    from twisted.internet.defer import Deferred

    done = Deferred()
    start = time.time()
    state = {"sent": 0}
    total = int(rate * seconds)

    def tick():
        due = min(total, int((time.time() - start) * rate) + 1)
        while state["sent"] < due:
            k = state["sent"]
            now = time.time()
            send({"type": "locker_state_changed", "timestamp": js_timestamp(now), "namespace": NAMESPACE,
                  "room": f"kiosk-{k % rooms}", "data": {"lockerId": f"kiosk-{k % rooms}:1", "oldState": "closed",
                                                         "newState": "open", "kioskId": f"kiosk-{k % rooms}",
                                                         "metadata": {"t": now, "i": k}}},
                 f"kiosk-{k % rooms}")
            state["sent"] += 1
        if state["sent"] >= total:
            loop.stop()
            done.callback({"sent": state["sent"], "elapsed": time.time() - start})

    loop = task.LoopingCall(tick)
    loop.start(0.005)
    return done


# -- workers: one socket, N processes, Redis pub/sub between them -----------------------


def run_worker(fd: int, redis_url: str, replay: int) -> None:
    import ctypes

    import txredisapi

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the parent
    host, port = redis_url.split("//", 1)[1].split("/")[0].split(":")
    factory = FloorFactory(replay)
    channel = "bench-floor"

    class Subscriber(txredisapi.SubscriberProtocol):
        def connectionMade(self):
            self.subscribe(channel)

        def messageReceived(self, pattern, channel_, message):
            value = json.loads(message)
            factory.deliver(value["envelope"], value.get("room"))

    publisher = txredisapi.lazyConnection(host, int(port))
    from twisted.internet.endpoints import TCP4ClientEndpoint

    TCP4ClientEndpoint(reactor, host, int(port)).connect(_subscriber_factory(Subscriber))
    site = build_site(factory, publish=lambda payload: publisher.publish(channel, payload))
    reactor.adoptStreamPort(fd, socket.AF_INET, site)
    os.close(fd)
    print("floor worker ready", flush=True)
    reactor.run()


def _subscriber_factory(protocol_class):
    import txredisapi

    factory = txredisapi.SubscriberFactory()
    factory.protocol = protocol_class
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--replay", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis", default="")
    parser.add_argument("--inherit-fd", type=int)
    args = parser.parse_args()
    if args.inherit_fd is not None:
        run_worker(args.inherit_fd, args.redis, args.replay)
        return
    if args.workers > 1:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(args.backlog)
        sock.setblocking(False)
        children = [
            subprocess.Popen([sys.executable, "-m", "bench.floor", "--port", str(args.port), "--inherit-fd",
                              str(sock.fileno()), "--redis", args.redis, "--replay", str(args.replay)],
                             pass_fds=[sock.fileno()])
            for _ in range(args.workers)
        ]

        def stop(*_):  # the waits below return once the children have gone
            for child in children:
                if child.poll() is None:
                    child.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"floor listening on {args.host}:{args.port} with {args.workers} workers", flush=True)
        for child in children:
            child.wait()
        return
    factory = FloorFactory(args.replay)
    reactor.listenTCP(args.port, build_site(factory), backlog=args.backlog, interface=args.host)
    stdio.StandardIO(Control(factory))
    print(f"floor listening on {args.host}:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
