"""The peer: what a Python user would pick instead of eformws, python-socketio on aiohttp
(stock asyncio loop, as `web.run_app` gives it). The same traffic in Socket.IO's terms:
namespace `/ws/lockers`, any `sessionId` accepted (query string), `connection` and
`room_joined` events on connect (the client joins room `locker_updates`), `join_room` /
`leave_room` events, and `POST /api/websocket/broadcast` with eformws's body, emitted as
event `<event>` with eformws's envelope B/C as its one argument (python-socketio encodes a
broadcast once). Pings as eformws (25 s interval; python-socketio's own 20 s timeout).
`--replay K` emits K canned events after the greeting (connect scenario).

Needs the bench extra (python-socketio, aiohttp).
"""

from __future__ import annotations

import argparse
import time
import uuid

import socketio
from aiohttp import web

NAMESPACE = "/ws/lockers"
DEFAULT_ROOM = "locker_updates"


def js_timestamp(at: float | None = None) -> str:
    at = time.time() if at is None else at
    whole = int(at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((at - whole) * 1000):03d}Z"


def build_app(replay: int) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=25, cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)
    canned = [
        {"id": str(uuid.uuid4()), "seq": str(k + 1), "type": "locker_state_changed", "timestamp": js_timestamp(),
         "namespace": NAMESPACE, "room": DEFAULT_ROOM, "version": "1.0.0",
         "data": {"lockerId": f"kiosk-1:{k}", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"}}
        for k in range(replay)
    ]

    @sio.on("connect", namespace=NAMESPACE)
    async def connect(sid, environ, auth=None):
        # any sessionId is accepted, as by the floor
        await sio.emit("connection", {"connectionId": sid, "namespace": NAMESPACE, "authenticated": True,
                                      "timestamp": js_timestamp()}, to=sid, namespace=NAMESPACE)
        await sio.enter_room(sid, DEFAULT_ROOM, namespace=NAMESPACE)
        await sio.emit("room_joined", {"room": DEFAULT_ROOM}, to=sid, namespace=NAMESPACE)
        for envelope in canned:
            await sio.emit(envelope["type"], envelope, to=sid, namespace=NAMESPACE)

    @sio.on("join_room", namespace=NAMESPACE)
    async def join_room(sid, data):
        room = data.get("room")
        await sio.enter_room(sid, room, namespace=NAMESPACE)
        await sio.emit("room_joined", {"room": room}, to=sid, namespace=NAMESPACE)

    @sio.on("leave_room", namespace=NAMESPACE)
    async def leave_room(sid, data):
        room = data.get("room")
        await sio.leave_room(sid, room, namespace=NAMESPACE)
        await sio.emit("room_left", {"room": room}, to=sid, namespace=NAMESPACE)

    async def broadcast(request: web.Request) -> web.Response:
        body = await request.json()
        envelope = {"type": body["event"], "data": body["data"], "timestamp": js_timestamp(),
                    "namespace": body["namespace"]}
        room = body.get("room")
        if room is not None:
            envelope["room"] = room
        await sio.emit(body["event"], envelope, to=room, namespace=body["namespace"])
        return web.json_response({"success": True, "timestamp": js_timestamp()})

    app.router.add_post("/api/websocket/broadcast", broadcast)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--replay", type=int, default=0)
    args = parser.parse_args()
    print(f"peer listening on {args.host}:{args.port}", flush=True)
    web.run_app(build_app(args.replay), host=args.host, port=args.port, backlog=args.backlog,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
