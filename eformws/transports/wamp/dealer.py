"""The dealer for the router's own procedures: `eform.status`, `eform.broadcast` and
`eform.emit`, each answering RESULT or a `WampError`; clients cannot register procedures."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred

from eformws.backends.redis import RedisUnavailable
from eformws.delivery.broadcasts import BroadcastError, UnknownNamespace, check_broadcast, send_broadcast
from eformws.events import ValidationError, json_value
from eformws.events.store import IdempotencyConflict
from eformws.transports.wamp.errors import (
    IDEMPOTENCY_CONFLICT,
    INVALID_ARGUMENT,
    INVALID_EVENT,
    NO_SUCH_NAMESPACE,
    NO_SUCH_PROCEDURE,
    NOT_AUTHORIZED,
    UNAVAILABLE,
    WampError,
)


def bind(procedure: str, names: tuple[str, ...], required: int, args, kwargs) -> dict[str, Any]:
    """Positional `args` and keyword `kwargs` bound to parameter `names`, the first
    `required` of which must be given; anything else is `wamp.error.invalid_argument`."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    signature = f"{procedure}({', '.join(names[:required])}{''.join(f', {n}=None' for n in names[required:])})"
    if len(args) > len(names):
        raise WampError(INVALID_ARGUMENT, f"too many arguments: {signature}")
    bound = dict(zip(names, args))
    for name, value in kwargs.items():
        if name not in names:
            raise WampError(INVALID_ARGUMENT, f"unknown argument {name!r}: {signature}")
        if name in bound:
            raise WampError(INVALID_ARGUMENT, f"{name} given twice: {signature}")
        bound[name] = value
    missing = [name for name in names[:required] if name not in bound]
    if missing:
        raise WampError(INVALID_ARGUMENT, f"missing argument {missing[0]!r}: {signature}")
    return bound


class Dealer:
    def __init__(self, hub, events, status: Callable[[], Any], policy):
        self._hub = hub
        self._events = events
        self._status = status
        self._policy = policy
        self._procedures = {
            "eform.status": (self.status, False),
            "eform.broadcast": (self.broadcast, True),
            "eform.emit": (self.emit, True),
        }

    @property
    def procedures(self) -> list[str]:
        return list(self._procedures)

    def call(self, connection, procedure: str, args, kwargs) -> Deferred:
        """Fires with the RESULT's args list, or fails with a `WampError` (or, for a fault
        of ours, anything else)."""
        entry = self._procedures.get(procedure)
        if entry is None:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        handler, privileged = entry
        if not self._policy.may_call(connection.session, privileged):
            raise WampError(NOT_AUTHORIZED, f"this session may not call {procedure}")
        return maybeDeferred(handler, args, kwargs)

    @inlineCallbacks
    def status(self, args, kwargs):
        bind("eform.status", (), 0, args, kwargs)
        status = yield self._status()
        return [status]

    @inlineCallbacks
    def broadcast(self, args, kwargs):
        """As `POST /api/websocket/broadcast`; the result is that endpoint's 200 body."""
        given = bind("eform.broadcast", ("namespace", "event", "data", "room"), 3, args, kwargs)
        namespace, event, data, room = (given.get(n) for n in ("namespace", "event", "data", "room"))
        if not isinstance(namespace, str):
            raise WampError(INVALID_ARGUMENT, "namespace must be a string")
        try:
            json_value("namespace", namespace)  # lone surrogates: nothing naming them could be written
            check_broadcast(event, data, room)
        except (ValidationError, BroadcastError) as e:
            raise WampError(INVALID_ARGUMENT, str(e)) from None
        try:
            answer = yield send_broadcast(self._events, namespace, event, data, room)
        except UnknownNamespace as e:
            raise WampError(NO_SUCH_NAMESPACE, str(e)) from None
        return [answer]

    @inlineCallbacks
    def emit(self, args, kwargs):
        """As `POST /api/websocket/events`; the result is the stored event (with `seq` and
        `epoch`); `idempotency_key` as that endpoint's Idempotency-Key header."""
        given = bind("eform.emit", ("type", "data", "idempotency_key"), 2, args, kwargs)
        key = given.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise WampError(INVALID_ARGUMENT, "idempotency_key must be a string")
        try:
            stored = yield self._events.emit(given["type"], given["data"], key)
        except ValidationError as e:
            raise WampError(INVALID_EVENT, str(e), field=e.field) from None
        except ValueError as e:  # a malformed key
            raise WampError(INVALID_ARGUMENT, str(e).replace("Idempotency-Key", "idempotency_key")) from None
        except IdempotencyConflict:
            raise WampError(IDEMPOTENCY_CONFLICT, "idempotency_key was already used for a different event") from None
        except RedisUnavailable as e:
            raise WampError(UNAVAILABLE, str(e)) from None
        return [stored]
