"""Procedures that clients register: REGISTER and UNREGISTER as the permission table allows,
a CALL turned into the callee's INVOCATION, and its YIELD or ERROR back to the caller."""

from __future__ import annotations

from typing import Any

from autobahn.wamp import message as wamp
from twisted.internet.defer import Deferred

from eformws.transports.wamp.errors import (
    CANCELED,
    INVALID_ARGUMENT,
    NO_SUCH_PROCEDURE,
    NOT_AUTHORIZED,
    PROCEDURE_ALREADY_EXISTS,
    WampError,
    new_id,
)
from eformws.transports.wamp.permissions import Permissions, is_own
from eformws.transports.wamp.permissions import role_of
from eformws.transports.wamp.topics import EXACT


class Registration:
    """One procedure and the session that serves it."""

    __slots__ = ("id", "procedure", "callee")

    def __init__(self, id: int, procedure: str, callee):
        self.id = id
        self.procedure = procedure
        self.callee = callee


class Invocation:
    """A CALL on its way: who asked (the caller's connection and WAMP session), and the
    Deferred that fires with the RESULT's (args, kwargs) or fails with the ERROR."""

    __slots__ = ("id", "registration", "caller", "caller_session", "answer")

    def __init__(self, id: int, registration: Registration, caller, caller_session: int):
        self.id = id
        self.registration = registration
        self.caller = caller
        self.caller_session = caller_session
        self.answer = Deferred()


class Registrations:
    """Every registration of this router, by procedure and by id, and the calls in flight."""

    def __init__(self, permissions: Permissions):
        self._permissions = permissions
        self._by_procedure: dict[str, Registration] = {}
        self._by_id: dict[int, Registration] = {}
        self._invocations: dict[int, Invocation] = {}

    def register(self, connection, request) -> Registration:
        """REGISTER of an exact procedure the session's role may register; WampError
        otherwise (`procedure_already_exists` when another session serves it)."""
        procedure, match = request.procedure, request.match or EXACT
        if match != EXACT:
            raise WampError(INVALID_ARGUMENT, f"{match} registrations are not supported yet; register exact procedures")
        if request.invoke not in (None, "single"):
            raise WampError(INVALID_ARGUMENT, f"shared registrations ({request.invoke}) are not supported yet")
        if is_own(procedure):
            raise WampError(NOT_AUTHORIZED, f"{procedure!r} is the router's own: clients cannot register it")
        if not self._permissions.allows(role_of(connection), "register", procedure):
            raise WampError(NOT_AUTHORIZED, f"this session may not register {procedure!r}")
        if procedure in self._by_procedure:
            raise WampError(PROCEDURE_ALREADY_EXISTS, f"{procedure!r} is registered already")
        registration_id = new_id()
        while registration_id in self._by_id:
            registration_id = new_id()
        registration = Registration(registration_id, procedure, connection)
        self._by_procedure[procedure] = self._by_id[registration_id] = registration
        return registration

    def unregister(self, connection, registration_id: int) -> bool:
        """False when the session has no such registration."""
        registration = self._by_id.get(registration_id)
        if registration is None or registration.callee is not connection:
            return False
        self._remove(registration)
        return True

    def serves(self, procedure: str) -> bool:
        return procedure in self._by_procedure

    def call(self, connection, request) -> Deferred:
        """Send the callee an INVOCATION; the Deferred fires with (args, kwargs) from its
        YIELD, or fails with a WampError carrying its ERROR (or `canceled` when it leaves)."""
        procedure = request.procedure
        entry = self._permissions.entry(role_of(connection), "call", procedure)
        if entry is None:
            raise WampError(NOT_AUTHORIZED, f"this session may not call {procedure!r}")
        registration = self._by_procedure.get(procedure)
        if registration is None:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        if request.payload is not None:
            raise WampError(INVALID_ARGUMENT, "payload transparency is not supported")
        disclosed: dict[str, Any] = {}
        if entry.disclose:
            session = connection.session
            disclosed = {"caller": connection.wamp.id, "caller_authid": session.user_id,
                         "caller_authrole": session.role}
        invocation_id = new_id()
        while invocation_id in self._invocations:
            invocation_id = new_id()
        invocation = Invocation(invocation_id, registration, connection, connection.wamp.id)
        self._invocations[invocation_id] = invocation
        registration.callee.send_message(wamp.Invocation(
            invocation_id, registration.id, args=request.args, kwargs=request.kwargs, **disclosed,
        ))
        return invocation.answer

    def yielded(self, connection, message) -> bool:
        """The callee's YIELD: the caller's RESULT. False for an invocation this session
        was not sent (a late answer to one canceled, or a peer's mistake)."""
        invocation = self._invocation_of(connection, message.request)
        if invocation is None:
            return False
        invocation.answer.callback((message.args, message.kwargs))
        return True

    def failed(self, connection, message) -> bool:
        """The callee's ERROR to an INVOCATION: the caller's ERROR, uri, args and kwargs
        untouched."""
        invocation = self._invocation_of(connection, message.request)
        if invocation is None:
            return False
        invocation.answer.errback(WampError.relayed(message.error, message.args, message.kwargs))
        return True

    def _invocation_of(self, connection, invocation_id: int) -> Invocation | None:
        invocation = self._invocations.get(invocation_id)
        if invocation is None or invocation.registration.callee is not connection:
            return None
        del self._invocations[invocation_id]
        return invocation

    def drop(self, connection) -> None:
        """A session ended: its registrations go, calls it was serving fail `canceled`,
        and the answers to calls it made are no longer awaited."""
        for registration in [r for r in self._by_id.values() if r.callee is connection]:
            self._remove(registration)
        for invocation in list(self._invocations.values()):
            if invocation.registration.callee is connection:
                del self._invocations[invocation.id]
                invocation.answer.errback(WampError(CANCELED, "the callee left before it answered"))
            elif invocation.caller is connection:
                del self._invocations[invocation.id]

    def _remove(self, registration: Registration) -> None:
        del self._by_id[registration.id]
        del self._by_procedure[registration.procedure]

    @property
    def count(self) -> int:
        return len(self._by_id)


