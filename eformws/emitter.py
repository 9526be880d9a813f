"""`WebSocketEvents`, the public Python API: validated emits (validate -> store -> bus) and
the hub's broadcasts; and module-level functions that reach the running gateway."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks

from eformws import events, metrics
from eformws.message import Message
from eformws.store import addresses_of


def _present(**fields) -> dict:
    """Keyword arguments that were given (None means "no value": left out)."""
    return {name: value for name, value in fields.items() if value is not None}


_EMITTED: dict = {}  # the events_emitted counter of each type, looked up once


class WebSocketEvents:
    def __init__(self, hub, store, bus):
        self.hub = hub
        self.store = store
        self.bus = bus

    # -- the generic path (HTTP, WAMP, the helpers below) ---------------------------

    def emit(self, event_type: str, data: Any) -> Deferred:
        """Validate, store, publish; fire with the stored envelope D (with `seq`).
        An invalid event fails with `events.ValidationError`; nothing is stored."""
        created = time.time()
        try:
            envelope = events.build(event_type, data, created)
        except events.ValidationError:
            return fail()
        return self._store_and_publish(envelope, created)

    @inlineCallbacks
    def _store_and_publish(self, envelope: dict, created: float):
        targets = events.targets_of(envelope)
        stored = yield metrics.timed(
            self.store.append(envelope, addresses_of(targets), events.ttl_of(envelope["type"])), "event_store", "append"
        )
        yield self.bus.publish(Message(stored, targets, created))
        counter = _EMITTED.get(stored["type"])
        if counter is None:
            counter = _EMITTED[stored["type"]] = metrics.events_emitted.labels(stored["type"])
        counter.inc()
        return stored

    # -- PROTOCOL.md section 6, the named emits ------------------------------------

    def emit_locker_state_changed(self, locker_id, old_state, new_state, kiosk_id, *, user_id=None, reason=None, metadata=None):
        data = {"lockerId": locker_id, "oldState": old_state, "newState": new_state, "kioskId": kiosk_id}
        data.update(_present(userId=user_id, reason=reason, metadata=metadata))
        return self.emit("locker_state_changed", data)

    def emit_help_requested(self, help_request: dict, priority: str | None = None):
        """`priority` wins over the request's own; neither given: `medium`."""
        if not isinstance(help_request, dict):
            return fail(events.ValidationError("data", "an object", help_request))
        data = dict(help_request)
        data["priority"] = priority or help_request.get("priority") or "medium"
        return self.emit("help_requested", data)

    def emit_help_status_updated(self, id, old_status, new_status, *, agent_id=None, resolution_notes=None):
        data = {"id": id, "old_status": old_status, "new_status": new_status}
        data.update(_present(agent_id=agent_id, resolution_notes=resolution_notes))
        return self.emit("help_status_updated", data)

    def emit_command_applied(self, command: dict, result: dict):
        return self.emit("command_applied", {"command": command, "result": result})

    def emit_system_status(self, component, status, health_score, *, metrics=None, message=None, details=None):
        data = {"component": component, "status": status, "health_score": health_score}
        data.update(_present(metrics=metrics, message=message, details=details))
        return self.emit("system_status", data)

    # -- the hub's broadcasts, on the same object ------------------------------------

    def broadcast(self, namespace, event, data):
        return self.hub.broadcast(namespace, event, data)

    def broadcast_to_room(self, namespace, room, event, data):
        return self.hub.broadcast_to_room(namespace, room, event, data)

    def get_connection_stats(self):
        return self.hub.get_connection_stats()


_running: WebSocketEvents | None = None


def install(api: WebSocketEvents | None) -> None:
    """Make `api` what the module-level functions use (the service does this on start)."""
    global _running
    _running = api


def websocket_events() -> WebSocketEvents:
    """The running gateway's API in this process; RuntimeError when none runs."""
    if _running is None:
        raise RuntimeError("no eformws gateway is running in this process")
    return _running


def _forward(name):
    def call(*args, **kwargs):
        try:
            api = websocket_events()
        except RuntimeError:
            return fail()
        return getattr(api, name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"`WebSocketEvents.{name}` on the gateway running in this process."
    return call


emit = _forward("emit")
emit_locker_state_changed = _forward("emit_locker_state_changed")
emit_help_requested = _forward("emit_help_requested")
emit_help_status_updated = _forward("emit_help_status_updated")
emit_command_applied = _forward("emit_command_applied")
emit_system_status = _forward("emit_system_status")
broadcast = _forward("broadcast")
broadcast_to_room = _forward("broadcast_to_room")
