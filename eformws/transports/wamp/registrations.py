"""Procedures that clients register: REGISTER and UNREGISTER as the permission table allows,
a CALL turned into the callee's INVOCATION, its YIELDs (progressive ones too) or ERROR back
to the caller, and the end of a call by timeout, CANCEL or a session that leaves."""

from __future__ import annotations

import random
from typing import Any

from autobahn.wamp import message as wamp
from twisted.internet.defer import Deferred

from eformws.core.wire import js_timestamp
from eformws.transports.wamp.errors import (
    CALL_LIMIT,
    CANCELED,
    INVALID_ARGUMENT,
    NO_SUCH_PROCEDURE,
    NOT_AUTHORIZED,
    PROCEDURE_ALREADY_EXISTS,
    REGISTRATION_LIMIT,
    TIMEOUT,
    WampError,
    new_id,
)
from eformws.transports.wamp.events import MetaEvents
from eformws.transports.wamp.permissions import Permissions, is_reserved, may_name_own, role_of
from eformws.transports.wamp.topics import EXACT, PREFIX_MATCH
from eformws.transports.wamp.wildcards import WildcardIndex

INVOKE_POLICIES = ("single", "roundrobin", "random", "first", "last")
MAX_TIMEOUT_MS = 86_400_000  # a CALL's timeout: at most a day
MAX_CALLS_IN_FLIGHT = 1000  # calls of one session to clients' procedures not answered yet


class Registration:
    """One procedure (or pattern) and the sessions that serve it, in the order they
    registered; `invoke` says which of them gets a call."""

    __slots__ = ("id", "procedure", "match", "invoke", "callees", "created", "_turn")

    def __init__(self, id: int, procedure: str, match: str, invoke: str):
        self.id = id
        self.procedure = procedure
        self.match = match
        self.invoke = invoke
        self.callees: list = []
        self.created = js_timestamp()
        self._turn = -1

    def meta_details(self) -> dict:
        """What the meta API tells of it (wamp.registration.get, on_create)."""
        return {"id": self.id, "created": self.created, "uri": self.procedure, "match": self.match,
                "invoke": self.invoke}

    def callee(self):
        """The session the next call goes to."""
        if self.invoke == "roundrobin":
            self._turn = (self._turn + 1) % len(self.callees)
            return self.callees[self._turn]
        if self.invoke == "random":
            return random.choice(self.callees)
        if self.invoke == "last":
            return self.callees[-1]
        return self.callees[0]  # single, first


class Invocation:
    """A CALL on its way: who asked (the caller's connection and its CALL's request id),
    where progressive results go (`progress`, None when the caller did not ask for them),
    the timer of its timeout, and the Deferred that fires with the final RESULT's (args,
    kwargs) or fails with the ERROR."""

    __slots__ = ("id", "callee", "caller", "request", "progress", "timer", "answer", "killed")

    def __init__(self, id: int, callee, caller, request: int, progress):
        self.id = id
        self.callee = callee
        self.caller = caller
        self.request = request
        self.progress = progress
        self.timer = None
        self.answer = Deferred()
        self.killed = False  # canceled with mode kill: the callee's answer ends it


class Registrations(MetaEvents):
    """Every registration of this router, by procedure and by id, and the calls in flight."""

    def __init__(self, permissions: Permissions, max_registrations: int = 100, reactor=None):
        self._permissions = permissions
        self._max_registrations = max_registrations  # per session
        self._reactor = reactor
        self._count_of: dict[Any, int] = {}  # connection -> its registrations
        self._by_key: dict[tuple[str, str], Registration] = {}  # (match, procedure)
        self._by_id: dict[int, Registration] = {}
        self._prefixes: dict[str, Registration] = {}
        self._wildcards = WildcardIndex()
        self._invocations: dict[int, Invocation] = {}
        self._by_call: dict[tuple[Any, int], Invocation] = {}  # (caller, CALL request id) -> its invocation
        self._calls_of: dict[Any, int] = {}  # caller -> its calls in flight

    def register(self, connection, request) -> Registration:
        """REGISTER of a procedure (exact) or pattern (prefix, wildcard) the session's role
        may register. A second session may join a registration only when both ask for the
        same shared `invoke` policy; else `procedure_already_exists`."""
        procedure, match, invoke = request.procedure, request.match or EXACT, request.invoke or "single"
        if invoke not in INVOKE_POLICIES:
            raise WampError(INVALID_ARGUMENT, f"invoke must be one of {', '.join(INVOKE_POLICIES)}")
        if may_name_own(procedure, match) or is_reserved(procedure):
            raise WampError(NOT_AUTHORIZED, f"{procedure!r} ({match}) names the router's own procedures: clients "
                                            f"cannot register it")
        if not self._permissions.may_register(role_of(connection), procedure, match):
            raise WampError(NOT_AUTHORIZED, f"this session may not register {procedure!r} ({match} match)")
        if self._count_of.get(connection, 0) >= self._max_registrations:
            limit = self._max_registrations
            raise WampError(REGISTRATION_LIMIT, f"Registration limit reached: at most {limit} registrations per session",
                            limit=limit)
        registration = self._by_key.get((match, procedure))
        if registration is not None:
            if connection in registration.callees:
                raise WampError(PROCEDURE_ALREADY_EXISTS, f"{procedure!r} is registered by this session already")
            if invoke == "single" or registration.invoke != invoke:
                raise WampError(PROCEDURE_ALREADY_EXISTS,
                                f"{procedure!r} is registered already (invoke {registration.invoke})")
        else:
            registration_id = new_id()
            while registration_id in self._by_id:
                registration_id = new_id()
            registration = Registration(registration_id, procedure, match, invoke)
            self._meta("wamp.registration.on_create", connection, registration.meta_details)
            self._by_key[(match, procedure)] = self._by_id[registration_id] = registration
            if match == PREFIX_MATCH:
                self._prefixes[procedure] = registration
            elif match != EXACT:
                self._wildcards[procedure] = registration
        registration.callees.append(connection)
        self._count_of[connection] = self._count_of.get(connection, 0) + 1
        self._meta("wamp.registration.on_register", connection, registration.id)
        return registration

    def unregister(self, connection, registration_id: int) -> bool:
        """False when the session is not among the registration's callees."""
        registration = self._by_id.get(registration_id)
        if registration is None or connection not in registration.callees:
            return False
        self._leave(registration, connection, connection)
        return True

    def all(self) -> list[Registration]:
        return list(self._by_id.values())

    def get(self, registration_id: int) -> Registration | None:
        return self._by_id.get(registration_id)

    def lookup(self, procedure: str, match: str) -> Registration | None:
        return self._by_key.get((match, procedure))

    def resolve(self, procedure: str) -> Registration | None:
        """The registration a CALL of `procedure` goes to: an exact one, else the longest
        matching prefix, else the wildcard pattern with the most named components (then the
        first in text order)."""
        registration = self._by_key.get((EXACT, procedure))
        if registration is not None:
            return registration
        if self._prefixes:
            for length in range(len(procedure), -1, -1):
                registration = self._prefixes.get(procedure[:length])
                if registration is not None:
                    return registration
        candidates = list(self._wildcards.matching(procedure)) if len(self._wildcards) else []
        if not candidates:
            return None
        return min(candidates, key=lambda r: (-sum(1 for part in r.procedure.split(".") if part), r.procedure))

    def call(self, connection, request, progress=None) -> Deferred:
        """Send the callee an INVOCATION; the Deferred fires with (args, kwargs) from its
        final YIELD, or fails with a WampError carrying its ERROR (`canceled` when it leaves
        or the call is canceled, `timeout` past the CALL's timeout). `progress(args, kwargs)`
        gets each progressive YIELD when the caller asked for them (`receive_progress`)."""
        procedure = request.procedure
        entry = self._permissions.entry(role_of(connection), "call", procedure)
        if entry is None:
            raise WampError(NOT_AUTHORIZED, f"this session may not call {procedure!r}")
        registration = self.resolve(procedure)
        if registration is None:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        if request.payload is not None:
            raise WampError(INVALID_ARGUMENT, "payload transparency is not supported")
        timeout = request.timeout
        if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= MAX_TIMEOUT_MS):
            raise WampError(INVALID_ARGUMENT, f"timeout must be milliseconds from 0 to {MAX_TIMEOUT_MS}")
        disclosed: dict[str, Any] = {}
        if entry.disclose:
            session = connection.session
            disclosed = {"caller": connection.wamp.id, "caller_authid": session.user_id,
                         "caller_authrole": session.role}
        if self._calls_of.get(connection, 0) >= MAX_CALLS_IN_FLIGHT:
            raise WampError(CALL_LIMIT, f"Call limit reached: at most {MAX_CALLS_IN_FLIGHT} calls in flight per session",
                            limit=MAX_CALLS_IN_FLIGHT)
        invocation_id = new_id()
        while invocation_id in self._invocations:
            invocation_id = new_id()
        callee = registration.callee()
        wants_progress = bool(request.receive_progress) and progress is not None
        if wants_progress and not _supports(callee, "progressive_call_results"):
            wants_progress = False  # the callee cannot send them: the caller gets the final result only
        invocation = Invocation(invocation_id, callee, connection, request.request,
                                progress if wants_progress else None)
        self._invocations[invocation_id] = invocation
        self._by_call[(connection, request.request)] = invocation
        self._calls_of[connection] = self._calls_of.get(connection, 0) + 1
        if timeout:
            invocation.timer = self._clock().callLater(timeout / 1000, self._timed_out, invocation)
        invocation.answer.addBoth(self._ended, invocation)
        sent = callee.send_message(wamp.Invocation(
            invocation_id, registration.id, args=request.args, kwargs=request.kwargs,
            receive_progress=True if wants_progress else None,
            procedure=procedure if registration.match != EXACT else None, **disclosed,
        ))
        if not sent:
            self._finish(invocation, WampError(INVALID_ARGUMENT, "the call cannot be carried in the callee's serialization"))
        return invocation.answer

    def cancel(self, connection, request) -> None:
        """The caller's CANCEL of its call `request.request`: `skip` answers it canceled at
        once and lets the callee finish unheard; `killnowait` also interrupts the callee;
        `kill` interrupts it and waits for its answer (which is then the caller's). A
        callee that does not announce call canceling is never interrupted (kill is skip).
        A CANCEL of a call already answered, or of none, does nothing."""
        invocation = self._by_call.get((connection, request.request))
        if invocation is None or invocation.killed:
            return
        mode = request.mode or "killnowait"
        interruptible = _supports(invocation.callee, "call_canceling")
        if mode != "skip" and interruptible:
            invocation.callee.send_message(wamp.Interrupt(invocation.id, mode=mode, reason=CANCELED))
        if mode == "kill" and interruptible:
            invocation.killed = True
            return
        self._finish(invocation, WampError(CANCELED, "the call was canceled"))

    def _timed_out(self, invocation: Invocation) -> None:
        invocation.timer = None
        if _supports(invocation.callee, "call_canceling"):
            invocation.callee.send_message(
                wamp.Interrupt(invocation.id, mode="killnowait", reason=TIMEOUT))
        self._finish(invocation, WampError(TIMEOUT, "the callee did not answer within the call's timeout"))

    def _finish(self, invocation: Invocation, error: WampError) -> None:
        if self._invocations.pop(invocation.id, None) is not None:
            invocation.answer.errback(error)

    def _ended(self, result, invocation: Invocation):
        """Whatever ended a call: forget it and stop its timer."""
        self._invocations.pop(invocation.id, None)
        if self._by_call.get((invocation.caller, invocation.request)) is invocation:
            del self._by_call[(invocation.caller, invocation.request)]
        left = self._calls_of.pop(invocation.caller, 1) - 1
        if left:
            self._calls_of[invocation.caller] = left
        if invocation.timer is not None and invocation.timer.active():
            invocation.timer.cancel()
        invocation.timer = None
        return result

    def _clock(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def yielded(self, connection, message) -> bool:
        """The callee's YIELD: the caller's RESULT (a progressive one when it says
        `progress` and the caller asked for them; else it is ignored, the final one still
        to come). False for an invocation this session was not sent (a late answer to one
        canceled or timed out, or a peer's mistake)."""
        invocation = self._invocations.get(message.request)
        if invocation is None or invocation.callee is not connection:
            return False
        if message.progress:
            if invocation.progress is not None and not invocation.killed:
                invocation.progress(message.args, message.kwargs)
            return True
        del self._invocations[message.request]
        invocation.answer.callback((message.args, message.kwargs))
        return True

    def failed(self, connection, message) -> bool:
        """The callee's ERROR to an INVOCATION: the caller's ERROR, uri, args and kwargs
        untouched."""
        return self.fail(connection, message.request, WampError.relayed(message.error, message.args, message.kwargs))

    def fail(self, connection, invocation_id: int, error: WampError) -> bool:
        """End an invocation of the callee's with `error` to its caller (an answer too big)."""
        invocation = self._invocation_of(connection, invocation_id)
        if invocation is None:
            return False
        invocation.answer.errback(error)
        return True

    def _invocation_of(self, connection, invocation_id: int) -> Invocation | None:
        invocation = self._invocations.get(invocation_id)
        if invocation is None or invocation.callee is not connection:
            return None
        del self._invocations[invocation_id]
        return invocation

    def drop(self, connection, session_id: int | None = None) -> None:
        """A session (`session_id`) ended: its registrations go, calls it was serving fail
        `canceled`, and calls it made are interrupted."""
        for registration in [r for r in self._by_id.values() if connection in r.callees]:
            self._leave(registration, connection, session_id)
        for invocation in list(self._invocations.values()):
            if invocation.callee is connection:
                self._finish(invocation, WampError(CANCELED, "the callee left before it answered"))
            elif invocation.caller is connection:
                if _supports(invocation.callee, "call_canceling"):
                    invocation.callee.send_message(
                        wamp.Interrupt(invocation.id, mode="killnowait", reason=CANCELED))
                self._finish(invocation, WampError(CANCELED, "the caller left"))

    def _leave(self, registration: Registration, connection, session) -> None:
        """Take `connection` out of a registration's callees; the last one ends it."""
        registration.callees.remove(connection)
        left = self._count_of.pop(connection) - 1
        if left:
            self._count_of[connection] = left
        self._meta("wamp.registration.on_unregister", session, registration.id)
        if registration.callees:
            return
        self._meta("wamp.registration.on_delete", session, registration.id)
        del self._by_id[registration.id]
        del self._by_key[(registration.match, registration.procedure)]
        if registration.match == PREFIX_MATCH:
            del self._prefixes[registration.procedure]
        elif registration.match != EXACT:
            del self._wildcards[registration.procedure]

    @property
    def count(self) -> int:
        return len(self._by_id)


def _supports(callee, feature: str) -> bool:
    """Whether the session on `callee` announced `feature` (call canceling, progressive
    results) for its callee role in HELLO."""
    roles = callee.wamp.peer_roles if callee.wamp is not None else {}
    return bool(getattr(roles.get("callee"), feature, False))
