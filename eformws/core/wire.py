"""The legacy JSON wire format: JS-style timestamps, compact JSON, envelopes A-C, and
parsing and checking of client messages (docs/protocol.md sections 3-5). No Twisted here."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

MAX_ROOM_LENGTH = 128
MAX_DEPTH = 128  # arrays and objects inside one another, in a client message or an API body
MAX_FINITE_INT = int(sys.float_info.max)  # larger integers are no finite double: refused as 1e400 is

# WebSocket close codes eformws sends (RFC 6455 section 7.4; docs/protocol.md section 3).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008  # authentication failed, session expired or revoked, forbidden
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013  # a slow consumer, or an event log that moved under it

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
    """The direct envelope (A): a reply or notice to one connection."""
    return {"type": type_, "data": data, "timestamp": js_timestamp(at)}


def namespace_broadcast(type_: str, data: Any, namespace: str, at: float | None = None) -> dict:
    """The namespace-broadcast envelope (B): to every connection of a namespace."""
    return {"type": type_, "data": data, "timestamp": js_timestamp(at), "namespace": namespace}


def room_broadcast(type_: str, data: Any, namespace: str, room: str, at: float | None = None) -> dict:
    """The room-broadcast envelope (C): to the members of one room."""
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


def _finite_float(text: str) -> float:
    """A number literal too large for a float (`1e400`) would become infinity: refused."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def _finite_int(text: str) -> int:
    """An integer literal beyond a double (`1` and 400 zeros) would be infinity to a
    JavaScript client: refused, as `1e400` is."""
    value = int(text)
    if abs(value) > MAX_FINITE_INT:
        raise ValueError("an integer beyond a double is out of range")
    return value


def sendable(value: Any) -> bool:
    """Whether `value` can be written as a frame: `dumps` refuses lone surrogates, which a
    `\\ud800` escape in JSON text gives and `json.loads` lets through."""
    try:
        dumps(value)
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def nested_deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects sit more than `limit` levels inside one another (walked
    without recursion). Deeper values parse, then fail to encode near the interpreter's
    recursion limit, at a depth that depends on the stack: refused before anything else."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def may_nest_deeper_than(text, limit: int = MAX_DEPTH) -> bool:
    """Cheap bound first: no more brackets and braces than `limit`, no deeper nesting."""
    if isinstance(text, str):
        return text.count("[") + text.count("{") > limit
    return text.count(b"[") + text.count(b"{") > limit


def parse_client_message(payload: bytes) -> dict:
    """One JSON object with a string `type`, or `ClientMessageError(invalid_message)`.
    Binary frames are UTF-8 like text (no UTF-16, no byte-order mark, no encoded
    surrogates). Not a message either: text that is not valid Unicode (a lone surrogate
    escape) and nesting deeper than MAX_DEPTH; either could never be sent back (a room, a
    type, a ping's timestamp), nor listed in status."""
    try:
        text = bytes(payload).decode("utf-8") if not isinstance(payload, str) else payload
        message = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_finite_int)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ClientMessageError("invalid_message", "Invalid message format") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ClientMessageError("invalid_message", "Invalid message format")
    if may_nest_deeper_than(text) and nested_deeper_than(message):
        raise ClientMessageError("invalid_message", "Invalid message format")
    if "\\u" in text and not sendable(message):
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


def name_problem(name: str, max_length: int) -> str | None:
    """What is wrong with a name (a room, a session's user or kiosk id), as the end of a
    sentence naming it; None if nothing."""
    if not name:
        return "must not be empty"
    if len(name) > max_length:
        return f"must be at most {max_length} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "must not contain control characters"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "must be valid Unicode text"
    return None


def check_room(room: Any) -> str:
    if not isinstance(room, str):
        raise ClientMessageError("invalid_room", "Room must be a string")
    problem = name_problem(room, MAX_ROOM_LENGTH)
    if problem:
        raise ClientMessageError("invalid_room", f"Room {problem}")
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
