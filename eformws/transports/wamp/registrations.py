"""Procedures that clients register: REGISTER and UNREGISTER as the permission table allows
(the registry decides, for the whole deployment), a CALL turned into the callee's
INVOCATION (through the bus when it is on another process), its YIELDs or ERROR back to
the caller, and the end of a call by timeout, CANCEL or a session or process that leaves."""

from __future__ import annotations

import random
from typing import Any

from autobahn.wamp import message as wamp
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

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
    UNAVAILABLE,
    WampError,
    new_id,
)
from eformws.transports.wamp.events import MetaEvents
from eformws.transports.wamp.permissions import Permissions, is_reserved, may_name_own, role_of
from eformws.transports.wamp.registry import (
    ALREADY,
    CANCELING,
    CREATED,
    DELETED,
    EXISTS,
    LEFT,
    PROGRESSIVE,
    REVOCATION,
    LocalRegistry,
    field,
)
from eformws.transports.wamp.topics import EXACT, PREFIX_MATCH
from eformws.transports.wamp.wildcards import WildcardIndex

log = Logger(namespace="eformws.wamp.registrations")

INVOKE_POLICIES = ("single", "roundrobin", "random", "first", "last")
MAX_TIMEOUT_MS = 86_400_000  # a CALL's timeout: at most a day
MAX_CALLS_IN_FLIGHT = 1000  # calls of one session to clients' procedures not answered yet
FEATURES = {"progressive_call_results": PROGRESSIVE, "call_canceling": CANCELING,
            "registration_revocation": REVOCATION}


class RemoteCallee:
    """A callee session on another process: what is sent to it goes there as a signal."""

    __slots__ = ("node", "session", "flags", "_signal")

    def __init__(self, node: str, session: int, flags: int, signal):
        self.node, self.session, self.flags, self._signal = node, session, flags, signal

    def send_message(self, message) -> bool:
        """An INVOCATION or INTERRUPT, to the callee's process; False when the bus cannot
        carry its payload."""
        if isinstance(message, wamp.Invocation):
            payload = {"kind": "invoke", "call": message.request, "registration": message.registration,
                       "session": self.session, "args": message.args, "kwargs": message.kwargs,
                       "progress": bool(message.receive_progress), "procedure": message.procedure,
                       "caller": message.caller, "caller_authid": message.caller_authid,
                       "caller_authrole": message.caller_authrole}
        else:
            payload = {"kind": "interrupt", "call": message.request, "mode": message.mode, "reason": message.reason}
        try:
            self._signal(payload, self.node)
        except ValueError:
            return False
        return True


class RemoteCaller:
    """The calls of another process's callers (one per process): its invocations here are
    known by (this, the caller process's invocation id)."""

    __slots__ = ("node",)

    def __init__(self, node: str):
        self.node = node


class Registration:
    """One procedure (or pattern) and the sessions that serve it, in the order they
    registered (local connections and `RemoteCallee`s); `invoke` says which of them gets a
    call."""

    __slots__ = ("id", "procedure", "match", "invoke", "callees", "created", "_turn")

    def __init__(self, id: int, procedure: str, match: str, invoke: str, created: str | None = None):
        self.id = id
        self.procedure = procedure
        self.match = match
        self.invoke = invoke
        self.callees: list = []
        self.created = created or js_timestamp()
        self._turn = -1

    def meta_details(self) -> dict:
        """What the meta API tells of it (wamp.registration.get, on_create)."""
        return {"id": self.id, "created": self.created, "uri": self.procedure, "match": self.match,
                "invoke": self.invoke}

    def callee_ids(self) -> list[int]:
        return [_session_of(callee) for callee in self.callees]

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
    """A CALL on its way: who asked (the caller's connection, or a `RemoteCaller`, and its
    CALL's request id), where progressive results go (`progress`, None when the caller did
    not ask for them), the timer of its timeout, and the Deferred that fires with the final
    RESULT's (args, kwargs) or fails with the ERROR."""

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
    """The deployment's registrations as this process knows them (the registry's records,
    kept fresh by its answers and by the other processes' signals), the registrations of
    this process's sessions, and the calls in flight here.

    `registry` decides who serves what (a LocalRegistry: this process alone); `node` names
    this process; `signal(payload, to)` reaches other processes (the bus's); `session(id)`
    is this process's connection of a WAMP session id, or None; `reachable()` whether the
    other processes can be reached now (the bus is healthy)."""

    def __init__(self, permissions: Permissions, max_registrations: int = 100, reactor=None, registry=None,
                 node: str = "", signal=None, session=None, reachable=None):
        self._permissions = permissions
        self._max_registrations = max_registrations  # per session
        self._reactor = reactor
        self._registry = registry if registry is not None else LocalRegistry()
        self._node = node
        self._signal = signal or (lambda payload, to=None: None)
        self._session = session or (lambda session_id: None)
        self._reachable = reachable or (lambda: True)  # whether the other processes can be reached now
        self._own: dict[Any, dict[str, tuple[int, str]]] = {}  # connection -> its (id, invoke) by record name
        self._claims: dict[Any, int] = {}  # connection -> its REGISTERs waiting for the registry
        self._claiming: set[tuple[str, int]] = set()  # (record name, session id) of those REGISTERs
        self._owed: list[tuple[str, str, int]] = []  # releases the registry could not take yet
        self._by_key: dict[str, Registration] = {}  # by record name (match and procedure)
        self._by_id: dict[int, Registration] = {}
        self._prefixes: dict[str, Registration] = {}
        self._wildcards = WildcardIndex()
        self._invocations: dict[int, Invocation] = {}
        self._by_call: dict[tuple[Any, int], Invocation] = {}  # (caller, CALL request id) -> its invocation
        self._calls_of: dict[Any, int] = {}  # caller -> its calls in flight
        self._callers: dict[str, RemoteCaller] = {}

    # -- registering ----------------------------------------------------------------------

    def register(self, connection, request) -> Deferred:
        """REGISTER of a procedure (exact) or pattern (prefix, wildcard) the session's role
        may register; fires with the Registration. A second session (of any process) may
        join a registration only when both ask for the same shared `invoke` policy; else
        `procedure_already_exists`."""
        procedure, match, invoke = request.procedure, request.match or EXACT, request.invoke or "single"
        if invoke not in INVOKE_POLICIES:
            raise WampError(INVALID_ARGUMENT, f"invoke must be one of {', '.join(INVOKE_POLICIES)}")
        if may_name_own(procedure, match) or is_reserved(procedure):
            raise WampError(NOT_AUTHORIZED, f"{procedure!r} ({match}) names the router's own procedures: clients "
                                            f"cannot register it")
        if not self._permissions.may_register(role_of(connection), procedure, match):
            raise WampError(NOT_AUTHORIZED, f"this session may not register {procedure!r} ({match} match)")
        name = field(procedure, match)
        own = self._own.get(connection, {})
        if name in own:
            raise WampError(PROCEDURE_ALREADY_EXISTS, f"{procedure!r} is registered by this session already")
        if len(own) + self._claims.get(connection, 0) >= self._max_registrations:
            limit = self._max_registrations
            raise WampError(REGISTRATION_LIMIT, f"Registration limit reached: at most {limit} registrations per session",
                            limit=limit)
        session_id = connection.wamp.id
        self._claims[connection] = self._claims.get(connection, 0) + 1
        self._claiming.add((name, session_id))
        d = self._registry.claim(procedure, match, invoke, self._node, session_id, _flags(connection), new_id(),
                                 js_timestamp())
        d.addBoth(self._claim_answered, connection, (name, session_id))
        d.addCallbacks(self._claimed, self._claim_failed, (connection, session_id, name, invoke),
                       errbackArgs=(procedure, match, session_id))
        return d

    def _claim_failed(self, failure, procedure: str, match: str, session_id: int):
        """Redis did not answer the claim (the link went, or its reply did): it may have run
        all the same, so its release is owed (a claim the session makes again meanwhile
        takes the record over). A claim Redis refused (an error reply) did not run."""
        if not _refused(failure):
            self._owed.append((procedure, match, session_id, None))
        return _unavailable(failure)

    def _claim_answered(self, result, connection, claim):
        self._claiming.discard(claim)
        left = self._claims.pop(connection) - 1
        if left:
            self._claims[connection] = left
        return result

    def _claimed(self, answer, connection, session_id: int, name: str, invoke: str) -> Registration:
        outcome, record = answer
        if outcome == ALREADY and name in self._own.get(connection, {}):
            raise WampError(PROCEDURE_ALREADY_EXISTS, f"{record['uri']!r} is registered by this session already")
        if outcome == ALREADY:  # a claim of this session whose answer was lost: it holds the record
            self._owed = [o for o in self._owed if (field(o[0], o[1]), o[2]) != (name, session_id)]
        if outcome == EXISTS:
            self._apply(name, record)
            raise WampError(PROCEDURE_ALREADY_EXISTS,
                            f"{record['uri']!r} is registered already (invoke {record['invoke']})")
        if self._session(session_id) is not connection:  # it left while the registry answered
            self._release(record["uri"], record["match"], session_id, record["id"])
            raise WampError(CANCELED, "the session left")
        self._own.setdefault(connection, {})[name] = (record["id"], invoke)
        registration = self._apply(name, record)
        if outcome == CREATED:
            self._meta("wamp.registration.on_create", session_id, registration.meta_details)
        self._meta("wamp.registration.on_register", session_id, registration.id)
        self._tell({name: record})
        return registration

    def unregister(self, connection, registration_id: int) -> bool:
        """False when the session is not among the registration's callees. The session
        stops being called at once; the registry hears of it as soon as it can."""
        name = next((n for n, (i, _) in self._own.get(connection, {}).items() if i == registration_id), None)
        if name is None:
            return False
        self._let_go(connection, name, connection.wamp.id)
        return True

    def _let_go(self, connection, name: str, session_id: int) -> Deferred:
        """Stop calling `connection` for record `name`, and release it in the registry
        (fires once the registry has answered or could not)."""
        own = self._own[connection]
        registration_id, _ = own.pop(name)
        if not own:
            del self._own[connection]
        registration = self._by_key.get(name)
        if registration is not None and connection in registration.callees:
            registration.callees.remove(connection)
            if not registration.callees:
                self._forget(registration)
        match, uri = name.split(" ", 1)
        return self._release(uri, match, session_id, registration_id)

    def _release(self, uri: str, match: str, session_id: int, registration_id: int | None, retried: bool = False):
        d = self._registry.release(uri, match, self._node, session_id)

        def released(answer):
            outcome, record = answer  # DELETED: the record as it was
            name = field(uri, match)
            if retried:
                log.info("wamp registry took a release it could not take before ({procedure})", procedure=uri)
            if outcome in (LEFT, DELETED):
                known = registration_id if registration_id is not None else record["id"]
                self._meta("wamp.registration.on_unregister", session_id, known)
                if outcome == DELETED:
                    self._meta("wamp.registration.on_delete", session_id, known)
            after = None if outcome == DELETED else record
            self._apply(name, after)
            self._tell({name: after})

        def owed(failure):
            log.warn("wamp registry did not take a release ({error}); retried once it answers",
                     error=failure.getErrorMessage()[:200])
            self._owed.append((uri, match, session_id, registration_id))

        return d.addCallbacks(released, owed)

    def retry_owed(self) -> None:
        """Release again what the registry could not take (unreachable, or refusing writes);
        not what the session holds again meanwhile (its claim's answer came after all)."""
        owed, self._owed = self._owed, []
        for uri, match, session_id, registration_id in owed:
            connection = self._session(session_id)
            name = field(uri, match)
            if connection is not None and (name in self._own.get(connection, {}) or (name, session_id) in self._claiming):
                continue
            self._release(uri, match, session_id, registration_id, retried=True)

    def refresh(self, procedure: str, match: str) -> Deferred:
        """Read one record again (the meta API does, to answer as the registry is now)."""
        return self._registry.get(procedure, match).addCallback(lambda record: self._apply(field(procedure, match), record))

    # -- what this process knows of the registry ------------------------------------------

    def _apply(self, name: str, record: dict | None) -> Registration | None:
        """Make this process's view of record `name` what the registry says: its callees
        here are the connections that still hold it, the others reached by signals."""
        registration = self._by_key.get(name)
        callees = []
        for node, session_id, flags in (record or {}).get("callees", ()):
            if node != self._node:
                callees.append(RemoteCallee(node, session_id, flags, self._signal))
                continue
            connection = self._session(session_id)
            if connection is not None and name in self._own.get(connection, {}):
                callees.append(connection)
        if not callees:
            if registration is not None:
                self._forget(registration)
            return None
        if registration is None or registration.id != record["id"]:
            if registration is not None:
                self._forget(registration)
            registration = Registration(record["id"], record["uri"], record["match"], record["invoke"],
                                        record.get("created"))
            self._by_key[name] = self._by_id[registration.id] = registration
            if registration.match == PREFIX_MATCH:
                self._prefixes[registration.procedure] = registration
            elif registration.match != EXACT:
                self._wildcards[registration.procedure] = registration
        registration.invoke = record["invoke"]
        registration.callees = callees
        return registration

    def _forget(self, registration: Registration) -> None:
        del self._by_key[field(registration.procedure, registration.match)]
        del self._by_id[registration.id]
        if registration.match == PREFIX_MATCH:
            del self._prefixes[registration.procedure]
        elif registration.match != EXACT:
            del self._wildcards[registration.procedure]

    def _tell(self, records: dict[str, dict | None], gone=()) -> None:
        """Tell the other processes which records changed and to what: they take them at
        once (so what a process's clients do after it, in the order of the bus, finds them)
        and read them again (another process may have changed one since)."""
        if self._registry.shared:
            self._signal({"kind": "registry", "records": [[name, record] for name, record in records.items()],
                          "gone": list(gone)})

    def _refresh(self, names) -> None:
        for name in names:
            match, uri = name.split(" ", 1)
            d = self._registry.get(uri, match)
            d.addCallbacks(lambda record, name=name: self._apply(name, record),
                           lambda failure: log.warn("wamp registry read failed: {error}",
                                                    error=failure.getErrorMessage()[:200]))

    def resync(self):
        """After the registry was out of reach (or lost its data: a restarted Redis), claim
        this process's registrations again and read every record. A registration another
        process took meanwhile is revoked from its session here (UNREGISTERED, when the
        session announced registration revocation)."""
        self.retry_owed()
        claims = []
        for connection, own in list(self._own.items()):
            for name, (registration_id, invoke) in list(own.items()):
                match, uri = name.split(" ", 1)
                d = self._registry.claim(uri, match, invoke, self._node, connection.wamp.id, _flags(connection),
                                         registration_id, js_timestamp())
                d.addCallback(self._reclaimed, connection, name, registration_id)
                d.addErrback(lambda failure: log.warn("wamp registry claim again failed: {error}",
                                                      error=failure.getErrorMessage()[:200]))
                claims.append(d)
        if claims:
            DeferredList(claims).addCallback(
                lambda _: log.info("wamp registry: {count} registrations of this process claimed again", count=len(claims)))
        return self.reload().addErrback(lambda failure: log.warn("wamp registry read failed: {error}",
                                                                 error=failure.getErrorMessage()[:200]))

    def reload(self) -> Deferred:
        """Read every record again (the meta API does, to answer as the registry is now)."""
        def loaded(records):
            names = {field(r["uri"], r["match"]): r for r in records}
            for name in set(self._by_key) - set(names):
                self._apply(name, None)
            for name, record in names.items():
                self._apply(name, record)

        return self._registry.load().addCallback(loaded)

    @property
    def shared(self) -> bool:
        """Whether other processes share the registry."""
        return self._registry.shared

    def _reclaimed(self, answer, connection, name: str, registration_id: int) -> None:
        outcome, record = answer
        if name not in self._own.get(connection, {}):
            return  # let go meanwhile: its release follows
        if outcome in (EXISTS,) or record["id"] != registration_id:
            session_id = connection.wamp.id
            self._own[connection].pop(name)
            if not self._own[connection]:
                del self._own[connection]
            if outcome != EXISTS:
                self._release(record["uri"], record["match"], session_id, record["id"])
            self._apply(name, record if outcome == EXISTS else None)
            log.warn("wamp registration {uri} was taken by another process while the registry was out of reach; "
                     "revoked from its session here", uri=record["uri"])
            if _flags(connection) & REVOCATION:
                connection.send_message(wamp.Unregistered(0, registration=registration_id,
                                                          reason=PROCEDURE_ALREADY_EXISTS))
            return
        self._apply(name, record)
        self._tell({name: record})

    def purged(self, dead: list[str], changes: list[tuple[dict, dict | None]]) -> None:
        """The registry took dead processes' callees out (this process noticed): tell the
        meta API's subscribers and every process."""
        records = {}
        for before, after in changes:
            if before is None:
                continue
            name = field(before["uri"], before["match"])
            records[name] = after
            kept = {(c[0], c[1]) for c in (after or {}).get("callees", ())}
            for node, session_id, _ in before["callees"]:
                if (node, session_id) not in kept:
                    self._meta("wamp.registration.on_unregister", session_id, before["id"])
            if after is None:
                self._meta("wamp.registration.on_delete", None, before["id"])
            self._apply(name, after)
        self._tell(records, dead)
        self.gone(dead)

    def gone(self, nodes) -> None:
        """Processes that died: calls they were serving fail `canceled`, calls they made
        are interrupted here."""
        nodes = set(nodes)
        for invocation in list(self._invocations.values()):
            if isinstance(invocation.callee, RemoteCallee) and invocation.callee.node in nodes:
                self._finish(invocation, WampError(CANCELED, "the callee's process stopped before it answered"))
            elif isinstance(invocation.caller, RemoteCaller) and invocation.caller.node in nodes:
                self._cancel(invocation, "killnowait", CANCELED)
        for node in nodes:
            self._callers.pop(node, None)

    # -- finding ---------------------------------------------------------------------------

    def all(self) -> list[Registration]:
        return list(self._by_id.values())

    def get(self, registration_id: int) -> Registration | None:
        return self._by_id.get(registration_id)

    def lookup(self, procedure: str, match: str) -> Registration | None:
        return self._by_key.get(field(procedure, match))

    def resolve(self, procedure: str) -> Registration | None:
        """The registration a CALL of `procedure` goes to: an exact one, else the longest
        matching prefix, else the wildcard pattern with the most named components (then the
        first in text order)."""
        registration = self._by_key.get(field(procedure, EXACT))
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

    # -- calling ---------------------------------------------------------------------------

    def call(self, connection, request, progress=None) -> Deferred:
        """Send the callee an INVOCATION; the Deferred fires with (args, kwargs) from its
        final YIELD, or fails with a WampError carrying its ERROR (`canceled` when it leaves
        or the call is canceled, `timeout` past the CALL's timeout). `progress(args, kwargs)`
        gets each progressive YIELD when the caller asked for them (`receive_progress`).
        A procedure this process does not know of is looked up in a shared registry (one
        registered on another process a moment ago) before `no_such_procedure`."""
        procedure = request.procedure
        entry = self._permissions.entry(role_of(connection), "call", procedure)
        if entry is None:
            raise WampError(NOT_AUTHORIZED, f"this session may not call {procedure!r}")
        if request.payload is not None:
            raise WampError(INVALID_ARGUMENT, "payload transparency is not supported")
        timeout = request.timeout
        if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= MAX_TIMEOUT_MS):
            raise WampError(INVALID_ARGUMENT, f"timeout must be milliseconds from 0 to {MAX_TIMEOUT_MS}")
        if self._calls_of.get(connection, 0) >= MAX_CALLS_IN_FLIGHT:
            raise WampError(CALL_LIMIT, f"Call limit reached: at most {MAX_CALLS_IN_FLIGHT} calls in flight per session",
                            limit=MAX_CALLS_IN_FLIGHT)
        registration = self.resolve(procedure)
        if registration is not None:
            return self._call(connection, request, progress, entry.disclose, registration)
        if not self._registry.shared:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        session_id = connection.wamp.id
        d = self._registry.get(procedure, EXACT)

        def found(record):
            registration = self._apply(field(procedure, EXACT), record) if record is not None else None
            if registration is None:
                raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
            if self._session(session_id) is not connection:
                raise WampError(CANCELED, "the caller left")
            return self._call(connection, request, progress, entry.disclose, registration)

        def unread(failure):
            if failure.check(WampError):
                return failure
            return _unavailable(failure)

        return d.addCallback(found).addErrback(unread)

    def _call(self, connection, request, progress, disclose: bool, registration: Registration) -> Deferred:
        callee = registration.callee()
        if isinstance(callee, RemoteCallee) and not self._reachable():
            # Not queued behind an outage (where the bus may have to drop it): answered now.
            raise WampError(UNAVAILABLE, "the callee is on another process, out of reach now (Redis); try again")
        disclosed: dict[str, Any] = {}
        if disclose:
            session = connection.session
            disclosed = {"caller": connection.wamp.id, "caller_authid": session.user_id,
                         "caller_authrole": session.role}
        wants_progress = bool(request.receive_progress) and progress is not None
        invocation = self._invoke(callee, registration, connection, request.request, request.args,
                                  request.kwargs, request.procedure, progress if wants_progress else None, disclosed,
                                  request.timeout)
        return invocation.answer

    def _invoke(self, callee, registration: Registration, caller, request: int, args, kwargs, procedure: str,
                progress, disclosed: dict, timeout) -> Invocation:
        invocation_id = new_id()
        while invocation_id in self._invocations:
            invocation_id = new_id()
        if progress is not None and not _supports(callee, "progressive_call_results"):
            progress = None  # the callee cannot send them: the caller gets the final result only
        invocation = Invocation(invocation_id, callee, caller, request, progress)
        self._invocations[invocation_id] = invocation
        self._by_call[(caller, request)] = invocation
        self._calls_of[caller] = self._calls_of.get(caller, 0) + 1
        if timeout:
            invocation.timer = self._clock().callLater(timeout / 1000, self._timed_out, invocation)
        invocation.answer.addBoth(self._ended, invocation)
        sent = callee.send_message(wamp.Invocation(
            invocation_id, registration.id, args=args, kwargs=kwargs,
            receive_progress=True if progress is not None else None,
            procedure=procedure if registration.match != EXACT else None, **disclosed,
        ))
        if not sent:
            self._finish(invocation, WampError(INVALID_ARGUMENT, "the call cannot be carried in the callee's serialization"))
        return invocation

    def cancel(self, connection, request) -> None:
        """The caller's CANCEL of its call `request.request`: `skip` answers it canceled at
        once and lets the callee finish unheard; `killnowait` also interrupts the callee;
        `kill` interrupts it and waits for its answer (which is then the caller's). A
        callee that does not announce call canceling is never interrupted (kill is skip).
        A CANCEL of a call already answered, or of none, does nothing."""
        invocation = self._by_call.get((connection, request.request))
        if invocation is not None:
            self._cancel(invocation, request.mode or "killnowait", CANCELED)

    def _cancel(self, invocation: Invocation, mode: str, reason: str) -> None:
        if invocation.killed:
            return
        interruptible = _supports(invocation.callee, "call_canceling")
        if mode != "skip" and interruptible:
            invocation.callee.send_message(wamp.Interrupt(invocation.id, mode=mode, reason=reason))
        if mode == "kill" and interruptible:
            invocation.killed = True
            return
        self._finish(invocation, WampError(reason, "the call was canceled" if reason == CANCELED
                                           else "the callee did not answer within the call's timeout"))

    def _timed_out(self, invocation: Invocation) -> None:
        invocation.timer = None
        if invocation.killed:  # canceled (kill) and still not answered: the timeout ends it
            self._finish(invocation, WampError(TIMEOUT, "the callee did not answer within the call's timeout"))
        else:
            self._cancel(invocation, "killnowait", TIMEOUT)

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
        self._answered(invocation, message.args, message.kwargs, bool(message.progress))
        return True

    def _answered(self, invocation: Invocation, args, kwargs, progress: bool) -> None:
        if progress:
            if invocation.progress is not None and not invocation.killed:
                invocation.progress(args, kwargs)
            return
        del self._invocations[invocation.id]
        invocation.answer.callback((args, kwargs))

    def failed(self, connection, message) -> bool:
        """The callee's ERROR to an INVOCATION: the caller's ERROR, uri, args and kwargs
        untouched."""
        return self.fail(connection, message.request, WampError.relayed(message.error, message.args, message.kwargs))

    def fail(self, connection, invocation_id: int, error: WampError) -> bool:
        """End an invocation of the callee's with `error` to its caller (an answer too big)."""
        invocation = self._invocations.get(invocation_id)
        if invocation is None or invocation.callee is not connection:
            return False
        del self._invocations[invocation_id]
        invocation.answer.errback(error)
        return True

    def drop(self, connection, session_id: int | None = None) -> None:
        """A session (`session_id`) ended: its registrations go, calls it was serving fail
        `canceled`, and calls it made are interrupted."""
        releases = [self._let_go(connection, name, session_id) for name in list(self._own.get(connection, {}))]
        served = [invocation for invocation in self._invocations.values() if invocation.callee is connection]

        def fail_served(_):
            for invocation in served:
                self._finish(invocation, WampError(CANCELED, "the callee left before it answered"))

        # Its callers hear of it once the registry has (and, through the bus, the other
        # processes): a caller that calls again is not sent to the session that left.
        DeferredList(releases).addCallback(fail_served)
        for invocation in list(self._invocations.values()):
            if invocation.caller is connection:
                if _supports(invocation.callee, "call_canceling"):
                    invocation.callee.send_message(
                        wamp.Interrupt(invocation.id, mode="killnowait", reason=CANCELED))
                self._finish(invocation, WampError(CANCELED, "the caller left"))

    # -- other processes' signals ----------------------------------------------------------

    def signal(self, payload: dict) -> None:
        """A signal from another process: a call for a callee here or its interrupt, an
        answer to a call made here, or records that changed."""
        handler = self._signals.get(payload.get("kind"))
        if handler is not None:
            handler(self, payload)

    def _invoked(self, s: dict) -> None:
        caller_node, call = s["from"], s["call"]
        connection = self._session(s["session"])
        registration = self._by_id.get(s["registration"])
        if connection is None or registration is None or connection not in registration.callees:
            self._signal({"kind": "error", "call": call, "error": CANCELED, "args": ["the callee left"],
                          "kwargs": None}, caller_node)
            return
        caller = self._callers.get(caller_node)
        if caller is None:
            caller = self._callers[caller_node] = RemoteCaller(caller_node)

        def progress(args, kwargs):
            self._send(caller_node, {"kind": "progress", "call": call, "args": args, "kwargs": kwargs})

        disclosed = {k: s[k] for k in ("caller", "caller_authid", "caller_authrole") if s.get(k) is not None}
        invocation = self._invoke(connection, registration, caller, call, s.get("args"), s.get("kwargs"),
                                  s.get("procedure") or registration.procedure, progress if s.get("progress") else None,
                                  disclosed, None)

        def answered(result):
            self._send(caller_node, {"kind": "result", "call": call, "args": result[0], "kwargs": result[1]})

        def failed(failure):
            error = failure.value if failure.check(WampError) else WampError(CANCELED, "the call failed")
            args = error.payload if error.payload is not None else [error.message]
            self._send(caller_node, {"kind": "error", "call": call, "error": error.uri, "args": args,
                                     "kwargs": error.kwargs})

        invocation.answer.addCallbacks(answered, failed)

    def _send(self, node: str, payload: dict) -> None:
        """An answer to another process's caller; one the bus cannot carry becomes ERROR."""
        try:
            self._signal(payload, node)
        except ValueError:
            self._signal({"kind": "error", "call": payload["call"], "error": INVALID_ARGUMENT,
                          "args": ["the answer cannot be carried between processes"], "kwargs": None}, node)

    def _interrupted(self, s: dict) -> None:
        invocation = self._by_call.get((self._callers.get(s["from"]), s["call"]))
        if invocation is not None:
            self._cancel(invocation, s.get("mode") or "killnowait", s.get("reason") or CANCELED)

    def _answer(self, s: dict) -> None:
        invocation = self._invocations.get(s["call"])
        callee = invocation.callee if invocation is not None else None
        if not isinstance(callee, RemoteCallee) or callee.node != s["from"]:
            return  # late (canceled, timed out) or not ours
        if s["kind"] == "error":
            del self._invocations[invocation.id]
            invocation.answer.errback(WampError.relayed(s["error"], s.get("args"), s.get("kwargs")))
        else:
            self._answered(invocation, s.get("args"), s.get("kwargs"), s["kind"] == "progress")

    def _changed(self, s: dict) -> None:
        records = dict(s.get("records") or ())
        for name, record in records.items():
            self._apply(name, _checked(record))
        self._refresh(records)
        gone = list(s.get("gone") or ())
        if self._node in gone:  # taken for dead while alive (a stall): claim this process's again
            log.warn("another process took this one for dead; claiming its registrations again")
            gone.remove(self._node)
            self.resync()
        if gone:
            self.gone(gone)

    _signals = {"invoke": _invoked, "interrupt": _interrupted, "progress": _answer, "result": _answer,
                "error": _answer, "registry": _changed}

    @property
    def count(self) -> int:
        return len(self._by_id)


def _refused(failure) -> bool:
    """Whether Redis answered with an error (the command did not run)."""
    import txredisapi

    return failure.check(txredisapi.ResponseError) is not None


def _unavailable(failure):
    if failure.check(WampError):
        return failure
    log.warn("wamp registry unreachable: {error}", error=failure.getErrorMessage()[:200])
    raise WampError(UNAVAILABLE, "the registry of procedures is out of reach; try again")


def _checked(record) -> dict | None:
    """A record as another process sent it, if it has the shape of one."""
    if record is None:
        return None
    try:
        return {"id": int(record["id"]), "uri": str(record["uri"]), "match": str(record["match"]),
                "invoke": str(record["invoke"]), "created": record.get("created"),
                "callees": [[str(c[0]), int(c[1]), int(c[2])] for c in record["callees"]]}
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _session_of(callee) -> int:
    return callee.session if isinstance(callee, RemoteCallee) else callee.wamp.id


def _flags(connection) -> int:
    """What the session on `connection` announced for its callee role in HELLO."""
    roles = connection.wamp.peer_roles if connection.wamp is not None else {}
    callee = roles.get("callee")
    return sum(flag for feature, flag in FEATURES.items() if getattr(callee, feature, False))


def _supports(callee, feature: str) -> bool:
    """Whether the session on `callee` (here or on another process) announced `feature`
    (call canceling, progressive results) for its callee role."""
    flags = callee.flags if isinstance(callee, RemoteCallee) else _flags(callee)
    return bool(flags & FEATURES[feature])
