"""The WAMP meta API of the deployment: `wamp.session.*`, `wamp.subscription.*` and
`wamp.registration.*` procedures (each process asked for its part), and the meta events."""

from __future__ import annotations

from itertools import chain
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from eformws.transports.wamp.dealer import bind
from eformws.transports.wamp.errors import INVALID_ARGUMENT, NO_SUCH_PROCEDURE, UNAVAILABLE, WampError, new_id
from eformws.transports.wamp.topics import EXACT, PREFIX_MATCH, WILDCARD

log = Logger(namespace="eformws.wamp.meta")

ASK_TIMEOUT = 1.0  # seconds a meta procedure waits for the other processes' parts

NO_SUCH_SESSION = "wamp.error.no_such_session"
NO_SUCH_SUBSCRIPTION = "wamp.error.no_such_subscription"
NO_SUCH_REGISTRATION = "wamp.error.no_such_registration"
ON_JOIN, ON_LEAVE = "wamp.session.on_join", "wamp.session.on_leave"


def session_details(connection) -> dict:
    """What the meta API tells of a joined session: never its eform session id."""
    session, wamp = connection.session, connection.wamp
    return {
        "session": wamp.id,
        "authid": session.user_id,
        "authrole": session.role,
        "authmethod": wamp.authmethod,
        "authprovider": "eformws",
        "transport": {"type": connection.transport_type},
    }


def _by_match(items) -> dict[str, list[int]]:
    listed: dict[str, list[int]] = {EXACT: [], PREFIX_MATCH: [], WILDCARD: []}
    for item in items:
        listed[item.match].append(item.id)
    return listed


class Meta:
    """Answers the meta procedures: registrations from the registry's records, sessions and
    subscriptions from every process (this one's part here, the others' asked for with a
    signal: `peers()` fires with their node ids; one that does not answer within
    ASK_TIMEOUT is left out). Publishes the meta events through the one publisher."""

    def __init__(self, router, publisher, peers=None, signal=None, reactor=None):
        self._router = router
        self._publisher = publisher
        self._peers = peers
        self._signal = signal
        self._reactor = reactor
        self._asks: dict[int, tuple[set, list, Deferred]] = {}  # asked: (waiting for, parts, answer)
        self._procedures = {
            "wamp.session.count": self._session_count,
            "wamp.session.list": self._session_list,
            "wamp.session.get": self._session_get,
            "wamp.subscription.list": self._subscription_list,
            "wamp.subscription.lookup": self._subscription_lookup,
            "wamp.subscription.match": self._subscription_match,
            "wamp.subscription.get": self._subscription_get,
            "wamp.subscription.list_subscribers": self._subscription_list_subscribers,
            "wamp.subscription.count_subscribers": self._subscription_count_subscribers,
            "wamp.registration.list": self._registration_list,
            "wamp.registration.lookup": self._registration_lookup,
            "wamp.registration.match": self._registration_match,
            "wamp.registration.get": self._registration_get,
            "wamp.registration.list_callees": self._registration_list_callees,
            "wamp.registration.count_callees": self._registration_count_callees,
        }

    @property
    def procedures(self) -> list[str]:
        return list(self._procedures)

    def call(self, procedure: str, args, kwargs) -> Deferred:
        """Fires with the RESULT's args; WampError for an unknown procedure or bad arguments."""
        handler = self._procedures.get(procedure)
        if handler is None:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        merge = MERGES.get(procedure)
        if procedure.startswith("wamp.registration.") and self._router.registrations.shared:
            d = self._registry_now(procedure, args, kwargs)
            d.addCallback(lambda _: [handler(procedure, args, kwargs)])
            return d.addErrback(_unreachable)
        if merge is None or self._peers is None:
            return succeed([handler(procedure, args, kwargs)])
        here = self._part(procedure, args, kwargs)
        d = self._ask(procedure, args, kwargs)
        return d.addCallback(lambda parts: [merge(procedure, [here, *parts])])

    def _registry_now(self, procedure: str, args, kwargs) -> Deferred:
        """Read what the answer needs from the registry as it is now, not as the other
        processes' signals have told it so far: the record named (lookup, match), the
        whole list (list), or, for an id this process does not know, every record."""
        registrations = self._router.registrations
        if procedure in ("wamp.registration.lookup", "wamp.registration.match"):
            uri = (list(args or ()) or [(kwargs or {}).get("procedure")])[0]
            options = (list(args or ()) + [None, None])[1] or (kwargs or {}).get("options") or {}
            match = options.get("match", EXACT) if isinstance(options, dict) and procedure.endswith("lookup") else EXACT
            if isinstance(uri, str) and match in (EXACT, PREFIX_MATCH, WILDCARD):
                return registrations.refresh(uri, match)
            return succeed(None)  # the handler says what is wrong with the arguments
        if procedure == "wamp.registration.list":
            return registrations.reload()
        registration = (list(args or ()) or [(kwargs or {}).get("registration")])[0]
        if isinstance(registration, int) and registrations.get(registration) is None:
            return registrations.reload()
        return succeed(None)

    def _part(self, procedure: str, args, kwargs):
        """This process's part of an answer: None for what it does not know of."""
        try:
            return self._procedures[procedure](procedure, args, kwargs)
        except WampError as e:
            if e.uri in (NO_SUCH_SESSION, NO_SUCH_SUBSCRIPTION):
                return None
            raise

    def _ask(self, procedure: str, args, kwargs) -> Deferred:
        """The other processes' parts (those that answer in time)."""
        d = maybeDeferred(self._peers)

        def asked(nodes):
            if not nodes:
                return []
            ask = new_id()
            answer = Deferred()
            self._asks[ask] = (set(nodes), [], answer)
            self._signal({"kind": "meta-ask", "ask": ask, "procedure": procedure, "args": args, "kwargs": kwargs})
            timer = self._clock().callLater(ASK_TIMEOUT, self._answered, ask)
            answer.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
            return answer

        def unknown(failure):
            log.warn("wamp meta: the other processes are unknown now ({error}); answering with this one's part",
                     error=failure.getErrorMessage()[:200])
            return []

        return d.addCallbacks(asked, unknown)

    def _answered(self, ask: int) -> None:
        waiting, parts, answer = self._asks.pop(ask, (None, None, None))
        if answer is not None:
            if waiting:
                log.info("wamp meta: {count} process(es) did not answer in time; left out", count=len(waiting))
            answer.callback(parts)

    def signal(self, payload: dict) -> None:
        """Another process asks for this one's part, or gives its own."""
        if payload.get("kind") == "meta-ask":
            procedure = payload.get("procedure")
            if procedure not in MERGES:
                return
            try:
                part = self._part(procedure, payload.get("args"), payload.get("kwargs"))
            except WampError:
                part = None
            self._signal({"kind": "meta-answer", "ask": payload.get("ask"), "part": part}, payload["from"])
            return
        entry = self._asks.get(payload.get("ask"))
        if entry is not None and payload["from"] in entry[0]:
            entry[0].discard(payload["from"])
            entry[1].append(payload.get("part"))
            if not entry[0]:
                self._answered(payload["ask"])

    def _clock(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- events ---------------------------------------------------------------------------

    def joined(self, connection) -> None:
        self._publish(ON_JOIN, [session_details(connection)])

    def left(self, connection, session_id: int) -> None:
        session = connection.session
        self._publish(ON_LEAVE, [session_id, session.user_id, session.role])

    def event(self, topic: str, args: list) -> None:
        """A subscription or registration meta event (`wamp.subscription.on_*`, ...)."""
        self._publish(topic, args)

    def _publish(self, topic: str, args: list) -> None:
        """Publish once what happens now is done: a session that subscribes to
        `wamp.subscription.*` gets SUBSCRIBED before the event of its own subscription."""
        if self._publisher is not None:
            from twisted.internet import reactor

            meta = {"wamp": {"topic": topic, "publication": new_id()}}
            reactor.callLater(0, self._publisher.publish_topic, args, {}, meta)

    # -- sessions -------------------------------------------------------------------------

    def _sessions(self, procedure, args, kwargs):
        given = bind(procedure, ("filter_authroles",), 0, args, kwargs)
        roles = given.get("filter_authroles")
        if roles is not None and (not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)):
            raise WampError(INVALID_ARGUMENT, "filter_authroles must be a list of strings")
        return [c for c in self._router.connections.values()
                if c.wamp is not None and c.wamp.id is not None and (roles is None or c.session.role in roles)]

    def _session_count(self, procedure, args, kwargs) -> int:
        return len(self._sessions(procedure, args, kwargs))

    def _session_list(self, procedure, args, kwargs) -> list[int]:
        return [c.wamp.id for c in self._sessions(procedure, args, kwargs)]

    def _session_get(self, procedure, args, kwargs) -> dict:
        session_id = _id(bind(procedure, ("session",), 1, args, kwargs)["session"], "session")
        for connection in self._router.connections.values():
            if connection.wamp is not None and connection.wamp.id == session_id:
                return session_details(connection)
        raise WampError(NO_SUCH_SESSION, f"no session {session_id}")

    # -- subscriptions ----------------------------------------------------------------------

    def _subscription_list(self, procedure, args, kwargs):
        bind(procedure, (), 0, args, kwargs)
        return _by_match(self._router.broker.subscriptions())

    def _subscription_lookup(self, procedure, args, kwargs):
        topic, match = _uri_and_match(bind(procedure, ("topic", "options"), 1, args, kwargs), "topic")
        found = self._router.broker.lookup(topic, match)
        return found.id if found is not None else None

    def _subscription_match(self, procedure, args, kwargs):
        topic = _string(bind(procedure, ("topic",), 1, args, kwargs)["topic"], "topic")
        ids = [s.id for s in self._router.broker.matching(topic)]
        return ids or None

    def _subscription(self, procedure, args, kwargs):
        subscription_id = _id(bind(procedure, ("subscription",), 1, args, kwargs)["subscription"], "subscription")
        found = self._router.broker.subscription(subscription_id)
        if found is None:
            raise WampError(NO_SUCH_SUBSCRIPTION, f"no subscription {subscription_id}")
        return found

    def _subscription_get(self, procedure, args, kwargs):
        return self._subscription(procedure, args, kwargs).meta_details()

    def _subscription_list_subscribers(self, procedure, args, kwargs):
        return sorted(c.wamp.id for c in self._subscription(procedure, args, kwargs).connections)

    def _subscription_count_subscribers(self, procedure, args, kwargs):
        return len(self._subscription(procedure, args, kwargs).connections)

    # -- registrations ----------------------------------------------------------------------

    def _registration_list(self, procedure, args, kwargs):
        bind(procedure, (), 0, args, kwargs)
        return _by_match(self._router.registrations.all())

    def _registration_lookup(self, procedure, args, kwargs):
        uri, match = _uri_and_match(bind(procedure, ("procedure", "options"), 1, args, kwargs), "procedure")
        found = self._router.registrations.lookup(uri, match)
        return found.id if found is not None else None

    def _registration_match(self, procedure, args, kwargs):
        uri = _string(bind(procedure, ("procedure",), 1, args, kwargs)["procedure"], "procedure")
        found = self._router.registrations.resolve(uri)
        return found.id if found is not None else None

    def _registration(self, procedure, args, kwargs):
        registration_id = _id(bind(procedure, ("registration",), 1, args, kwargs)["registration"], "registration")
        found = self._router.registrations.get(registration_id)
        if found is None:
            raise WampError(NO_SUCH_REGISTRATION, f"no registration {registration_id}")
        return found

    def _registration_get(self, procedure, args, kwargs):
        return self._registration(procedure, args, kwargs).meta_details()

    def _registration_list_callees(self, procedure, args, kwargs):
        return self._registration(procedure, args, kwargs).callee_ids()

    def _registration_count_callees(self, procedure, args, kwargs):
        return len(self._registration(procedure, args, kwargs).callees)


def _unreachable(failure):
    if failure.check(WampError):
        return failure
    log.warn("wamp meta: the registry is out of reach: {error}", error=failure.getErrorMessage()[:200])
    raise WampError(UNAVAILABLE, "the registry of procedures is out of reach; try again")


def _sum(procedure, parts):
    return sum(part for part in parts if part is not None)


def _all(procedure, parts):
    return list(chain.from_iterable(part for part in parts if part is not None))


def _found(procedure, parts):
    """The part of the process that knows it (subscriptions: the same id everywhere)."""
    for part in parts:
        if part is not None:
            return part
    if procedure.startswith("wamp.session."):
        raise WampError(NO_SUCH_SESSION, "no such session")
    raise WampError(NO_SUCH_SUBSCRIPTION, "no such subscription")


def _known(procedure, parts):
    """What any process knows (a lookup), or None."""
    return next((part for part in parts if part is not None), None)


def _ids(procedure, parts):
    ids = sorted(set(chain.from_iterable(part for part in parts if part)))
    return ids or None


def _by_kind(procedure, parts):
    listed: dict[str, list[int]] = {EXACT: [], PREFIX_MATCH: [], WILDCARD: []}
    for part in parts:
        for match, ids in (part or {}).items():
            if match in listed:
                listed[match] = sorted(set(listed[match]) | set(ids))
    return listed


def _subscribers(procedure, parts):
    if all(part is None for part in parts):
        raise WampError(NO_SUCH_SUBSCRIPTION, "no such subscription")
    return sorted(_all(procedure, parts)) if procedure.endswith("list_subscribers") else _sum(procedure, parts)


# How the parts of the processes make one answer (the registration procedures read the
# registry's records, which every process has: they need no parts).
MERGES = {
    "wamp.session.count": _sum,
    "wamp.session.list": _all,
    "wamp.session.get": _found,
    "wamp.subscription.list": _by_kind,
    "wamp.subscription.lookup": _known,
    "wamp.subscription.match": _ids,
    "wamp.subscription.get": _found,
    "wamp.subscription.list_subscribers": _subscribers,
    "wamp.subscription.count_subscribers": _subscribers,
}


def _id(value: Any, name: str) -> int:
    if type(value) is not int:
        raise WampError(INVALID_ARGUMENT, f"{name} must be an integer id")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise WampError(INVALID_ARGUMENT, f"{name} must be a string")
    return value


def _uri_and_match(given: dict, name: str) -> tuple[str, str]:
    options = given.get("options") or {}
    if not isinstance(options, dict):
        raise WampError(INVALID_ARGUMENT, "options must be an object")
    match = options.get("match", EXACT)
    if match not in (EXACT, PREFIX_MATCH, WILDCARD):
        raise WampError(INVALID_ARGUMENT, "options.match must be exact, prefix or wildcard")
    return _string(given[name], name), match
