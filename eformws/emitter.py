"""The public Python API of the gateway running in this process: `websocket_events()` and
module-level `emit_<type>`/`broadcast` functions that forward to its `WebSocketEvents`."""

from __future__ import annotations

from twisted.internet.defer import fail

from eformws.delivery.publisher import WebSocketEvents

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
