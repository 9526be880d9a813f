"""`WebSocketEvents`, the one way messages are published: structured events (validate ->
append to the event log, whose feed delivers them) and broadcasts, room broadcasts and
direct sends (build -> bus)."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, fail

from eformws import events
from eformws.core import metrics, wire
from eformws.core.deferreds import shielded
from eformws.core.message import Message, Target
from eformws.events.store import Idempotency, addresses_of, fingerprint

MAX_KEY_LENGTH = 255


def _present(**fields) -> dict:
    """Keyword arguments that were given (None means "no value": left out)."""
    return {name: value for name, value in fields.items() if value is not None}


def check_idempotency_key(key: Any) -> str:
    """An Idempotency-Key: 1 to 255 visible ASCII characters; else ValueError saying so."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise ValueError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    return key


_EMITTED: dict = {}  # the events_emitted counter of each type, looked up once


class WebSocketEvents:
    def __init__(self, hub, store, bus, idempotency_window: float = 600.0, max_data_bytes: int = events.MAX_DATA_BYTES):
        self.hub = hub
        self.store = store
        self.bus = bus
        self.idempotency_window = idempotency_window
        self.max_data_bytes = max_data_bytes

    # -- the generic path (HTTP, WAMP, the helpers below) ---------------------------

    def emit(self, event_type: str, data: Any, idempotency_key: str | None = None) -> Deferred:
        """Validate and append to the event log; fire with the stored structured-event envelope (D: with `seq`
        and `epoch`) once it is in the log, from which every process delivers it. An invalid
        event fails with `events.ValidationError`, nothing stored. With `idempotency_key`, a
        repeat within `events.idempotency_window` fires with the first stored envelope."""
        d = self.append(event_type, data, idempotency_key)
        d.addCallback(lambda appended: appended.envelope)
        return d

    def append(self, event_type: str, data: Any, idempotency_key: str | None = None) -> Deferred:
        """`emit`, firing with the store's `Appended` (which says whether it was a repeat);
        ValueError for a malformed key, `IdempotencyConflict` for a key used for another event."""
        created = time.time()
        try:
            envelope = events.build(event_type, data, created, self.max_data_bytes)  # validated first
            idempotency = None
            if idempotency_key is not None:
                idempotency = Idempotency(check_idempotency_key(idempotency_key), fingerprint(event_type, data),
                                          self.idempotency_window)
        except (events.ValidationError, ValueError):
            return fail()
        targets = events.targets_of(envelope)
        d = metrics.timed(
            self.store.append(envelope, addresses_of(targets), events.ttl_of(envelope["type"]), idempotency),
            "event_store", "append",
        )
        d.addCallback(self._counted)
        return shielded(d)  # a caller that gives up (an HTTP client gone) never stops an append half-way

    @staticmethod
    def _counted(appended):
        if not appended.replayed:
            kind = appended.envelope["type"]
            counter = _EMITTED.get(kind)
            if counter is None:
                counter = _EMITTED[kind] = metrics.events_emitted.labels(kind)
            counter.inc()
        return appended

    # -- docs/protocol.md section 6, the named emits ------------------------------------

    def emit_locker_state_changed(self, locker_id, old_state, new_state, kiosk_id, *, user_id=None, reason=None,
                                  metadata=None, idempotency_key=None):
        data = {"lockerId": locker_id, "oldState": old_state, "newState": new_state, "kioskId": kiosk_id}
        data.update(_present(userId=user_id, reason=reason, metadata=metadata))
        return self.emit("locker_state_changed", data, idempotency_key)

    def emit_help_requested(self, help_request: dict, priority: str | None = None, *, idempotency_key=None):
        """`priority` wins over the request's own; neither given: `medium`."""
        if not isinstance(help_request, dict):
            return fail(events.ValidationError("data", "an object", help_request))
        data = dict(help_request)
        data["priority"] = priority or help_request.get("priority") or "medium"
        return self.emit("help_requested", data, idempotency_key)

    def emit_help_status_updated(self, id, old_status, new_status, *, agent_id=None, resolution_notes=None,
                                 idempotency_key=None):
        data = {"id": id, "old_status": old_status, "new_status": new_status}
        data.update(_present(agent_id=agent_id, resolution_notes=resolution_notes))
        return self.emit("help_status_updated", data, idempotency_key)

    def emit_command_applied(self, command: dict, result: dict, *, idempotency_key=None):
        return self.emit("command_applied", {"command": command, "result": result}, idempotency_key)

    def emit_system_status(self, component, status, health_score, *, metrics=None, message=None, details=None,
                           idempotency_key=None):
        data = {"component": component, "status": status, "health_score": health_score}
        data.update(_present(metrics=metrics, message=message, details=details))
        return self.emit("system_status", data, idempotency_key)

    # -- broadcasts and direct sends: built here, published on the bus ------------------

    def broadcast(self, namespace: str, event: str, data: Any, meta: dict | None = None) -> Deferred:
        """The namespace-broadcast envelope (B) to every connection of `namespace` on every process; fires with the
        count of this process's connections that got it. `meta` travels with the message
        untouched, for endpoints (see `Message.meta`). UnknownNamespace at once."""
        self.hub.namespace(namespace)
        envelope = wire.namespace_broadcast(event, data, namespace)
        return self.bus.publish(Message(envelope, (Target(namespace),), meta=meta or {}))

    def broadcast_to_room(self, namespace: str, room: str, event: str, data: Any,
                          meta: dict | None = None) -> Deferred:
        """The room-broadcast envelope (C) to the members of `room` in `namespace` only."""
        self.hub.namespace(namespace)
        envelope = wire.room_broadcast(event, data, namespace, room)
        return self.bus.publish(Message(envelope, (Target(namespace, rooms=(room,)),), meta=meta or {}))

    def publish_topic(self, args: list, kwargs: dict, meta: dict) -> Deferred:
        """A WAMP application's publication (not an eform message: no namespace gets it),
        its args and kwargs untouched, to the endpoints of every process; `meta` says the
        topic and who it is for (see the WAMP broker)."""
        return self.bus.publish(Message({"args": args, "kwargs": kwargs}, (), meta=meta, opaque=True))

    def send(self, connection_id: str, event: str, data: Any) -> Deferred:
        """The direct envelope (A) to one connection, wherever it is connected."""
        targets = tuple(Target(path, connection_id=connection_id) for path in self.hub.namespaces)
        return self.bus.publish(Message(wire.direct(event, data), targets))

    def get_connection_stats(self) -> dict:
        """This process's connections, rooms and delivery latency (see docs/protocol.md)."""
        return self.hub.get_connection_stats()
