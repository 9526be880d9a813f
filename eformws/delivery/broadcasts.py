"""A broadcast as every way in takes it (POST /api/websocket/broadcast, the eform.broadcast
procedure, a WAMP PUBLISH): the check of what it carries, and the sending with its answer."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from eformws.core import wire
from eformws.events import ValidationError, json_value


class BroadcastError(ValueError):
    """What is wrong with a broadcast, naming the field; each way in answers it its own way
    (HTTP 400, WAMP `wamp.error.invalid_argument`)."""


class UnknownNamespace(LookupError):
    """The broadcast names a namespace this gateway does not have."""


def check_broadcast(event: Any, data: Any, room: Any = None, prefix: str = "") -> None:
    """Event a non-empty string, data a JSON object, room (when given) a room name, with
    nothing a frame cannot carry (NaN, Infinity, 1e400, lone surrogates: accepted, they
    would fail when framed, a 500 with listeners and dropped without). BroadcastError
    names the field as `prefix` + its name."""
    if not isinstance(event, str) or not event:
        raise BroadcastError(f"{prefix}event must be a non-empty string")
    if not isinstance(data, dict):
        raise BroadcastError(f"{prefix}data must be an object")
    try:
        json_value(prefix + "event", event)
        json_value(prefix + "data", data)
    except ValidationError as e:
        raise BroadcastError(str(e)) from None
    if room is not None:
        try:
            wire.check_room(room)
        except wire.ClientMessageError as e:
            raise BroadcastError(f"{prefix}room: {e.message}") from None


@inlineCallbacks
def send_broadcast(publisher, namespace: str, event: str, data: dict, room: str | None = None):
    """Send a checked broadcast through the publisher (WebSocketEvents) to a namespace, or to
    one of its rooms; fires with the answer both request forms give. UnknownNamespace (at
    once) for a namespace not configured."""
    if namespace not in publisher.hub.namespaces:
        raise UnknownNamespace(f"Unknown namespace: {namespace}")
    if room is None:
        delivered = yield publisher.broadcast(namespace, event, data)
        where = namespace
    else:
        delivered = yield publisher.broadcast_to_room(namespace, room, event, data)
        where = f"{namespace}/{room}"
    return {
        "success": True,
        "message": f"Broadcast sent to {where}",
        "delivered": delivered or 0,
        "timestamp": wire.js_timestamp(),
    }
