"""The legacy JSON wire format: JS-style timestamps, compact JSON, envelopes A-C, and
parsing and checking of client messages (PROTOCOL.md sections 3-5). No Twisted here."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

MAX_ROOM_LENGTH = 128

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def js_timestamp(at: float | None = None) -> str:
    """UTC ISO 8601 with exactly three fractional digits and `Z`, as JS `toISOString()`."""
    if at is None:
        at = time.time()
    whole = int(at)
    millis = int((at - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes, the way every frame is written."""
    return _encoder.encode(value).encode("utf-8")


def direct(type_: str, data: Any, at: float | None = None) -> dict:
    """Envelope A: a reply or notice to one connection."""
    return {"type": type_, "data": data, "timestamp": js_timestamp(at)}


def namespace_broadcast(type_: str, data: Any, namespace: str, at: float | None = None) -> dict:
    """Envelope B: a broadcast to every connection of a namespace."""
    return {"type": type_, "data": data, "timestamp": js_timestamp(at), "namespace": namespace}


def room_broadcast(type_: str, data: Any, namespace: str, room: str, at: float | None = None) -> dict:
    """Envelope C: a broadcast to the members of one room."""
    return {
        "type": type_,
        "data": data,
        "timestamp": js_timestamp(at),
        "namespace": namespace,
        "room": room,
    }


def error(code: str, message: str) -> dict:
    return direct("error", {"code": code, "message": message})


class ClientMessageError(Exception):
    """A client message that gets an `error` reply; `code` and `message` as in section 4."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_client_message(payload: bytes) -> dict:
    """One JSON object with a string `type`, or `ClientMessageError(invalid_message)`."""
    try:
        message = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ClientMessageError("invalid_message", "Invalid message format") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ClientMessageError("invalid_message", "Invalid message format")
    return message


def _field(message: dict, name: str) -> tuple[bool, Any]:
    """A field given at the top level or inside `data` (both forms are in the field)."""
    if name in message:
        return True, message[name]
    data = message.get("data")
    if isinstance(data, dict) and name in data:
        return True, data[name]
    return False, None


def room_of(message: dict) -> str:
    """The room a join_room/leave_room names, checked against the room rules."""
    present, room = _field(message, "room")
    if not present or room is None:
        raise ClientMessageError("invalid_room", "Room is required")
    return check_room(room)


def check_room(room: Any) -> str:
    if not isinstance(room, str):
        raise ClientMessageError("invalid_room", "Room must be a string")
    if not room:
        raise ClientMessageError("invalid_room", "Room must not be empty")
    if len(room) > MAX_ROOM_LENGTH:
        raise ClientMessageError("invalid_room", f"Room must be at most {MAX_ROOM_LENGTH} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in room):
        raise ClientMessageError("invalid_room", "Room must not contain control characters")
    return room


@dataclass(frozen=True)
class Ping:
    echo: Any
    present: bool


def ping_of(message: dict) -> Ping:
    """The timestamp a ping carries (`data.timestamp` first, then top-level), if any."""
    data = message.get("data")
    if isinstance(data, dict) and "timestamp" in data:
        return Ping(data["timestamp"], True)
    if "timestamp" in message:
        return Ping(message["timestamp"], True)
    return Ping(None, False)


def pong(ping: Ping) -> dict:
    now = time.time()
    server_ts = js_timestamp(now)
    echo = ping.echo if ping.present else server_ts
    return direct("pong", {"timestamp": echo, "server_timestamp": server_ts}, now)
