"""The WAMP meta API of this router: `wamp.session.*`, `wamp.subscription.*` and
`wamp.registration.*` procedures, and the meta events (sessions, subscriptions, registrations)."""

from __future__ import annotations

from typing import Any

from eformws.transports.wamp.dealer import bind
from eformws.transports.wamp.errors import INVALID_ARGUMENT, NO_SUCH_PROCEDURE, WampError, new_id
from eformws.transports.wamp.topics import EXACT, PREFIX_MATCH, WILDCARD

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
        "transport": {"type": "websocket"},
    }


def _by_match(items) -> dict[str, list[int]]:
    listed: dict[str, list[int]] = {EXACT: [], PREFIX_MATCH: [], WILDCARD: []}
    for item in items:
        listed[item.match].append(item.id)
    return listed


class Meta:
    """Answers the meta procedures from the router's sessions, broker and registrations
    (this process's), and publishes session meta events through the one publisher."""

    def __init__(self, router, publisher):
        self._router = router
        self._publisher = publisher
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

    def call(self, procedure: str, args, kwargs) -> list:
        """The RESULT's args; WampError for an unknown procedure or bad arguments."""
        handler = self._procedures.get(procedure)
        if handler is None:
            raise WampError(NO_SUCH_PROCEDURE, f"no procedure {procedure}")
        return [handler(procedure, args, kwargs)]

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
