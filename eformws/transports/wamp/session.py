"""One WAMP session's life on a transport: HELLO and authentication (`ticket`, `wampcra`,
`cookie`), the established session's requests to broker and dealer, GOODBYE both ways, ABORT."""

from __future__ import annotations

from autobahn.wamp import message as wamp
from autobahn.wamp.role import RoleBrokerFeatures, RoleDealerFeatures
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from eformws.core import metrics
from eformws.core.wire import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR
from eformws.sessions import first_valid_session
from eformws.transports.wamp import errors
from eformws.transports.wamp.cra import WAMPCRA, CraChallenge
from eformws.transports.wamp.errors import WampError, new_id
from eformws.transports.wamp.permissions import is_own, is_reserved
from eformws.transports.wamp.topics import EXACT, REALM, is_uri

log = Logger(namespace="eformws.wamp")

ROUTER_ROLES = {
    "broker": RoleBrokerFeatures(pattern_based_subscription=True, publisher_exclusion=True,
                                 publisher_identification=True, subscriber_blackwhite_listing=True,
                                 event_retention=True, session_meta_api=True, subscription_meta_api=True),
    "dealer": RoleDealerFeatures(caller_identification=True, progressive_call_results=True, call_timeout=True,
                                 call_canceling=True, shared_registration=True, pattern_based_registration=True,
                                 session_meta_api=True, registration_meta_api=True),
}
AUTH_PROVIDER = "eformws"

SHUTDOWN_CODES = (1001, 1012)

# session states
WAITING = "waiting for HELLO"
AUTHENTICATING = "authenticating"
CHALLENGED = "waiting for AUTHENTICATE"
ESTABLISHED = "established"
CLOSING = "waiting for GOODBYE"
CLOSED = "closed"
OPENING = (WAITING, AUTHENTICATING, CHALLENGED)

# requests that an ERROR can answer when their URI is invalid
_URI_REQUESTS = (wamp.Subscribe.MESSAGE_TYPE, wamp.Publish.MESSAGE_TYPE, wamp.Call.MESSAGE_TYPE, wamp.Register.MESSAGE_TYPE)


def _name(message) -> str:
    return type(message).__name__.upper()


def _unusable(methods: list[str], authid, cra_key: str) -> str:
    """Why an offered `wampcra` was passed over, for the ABORT (empty when not offered)."""
    if WAMPCRA not in methods:
        return ""
    if not cra_key:
        return "wampcra is not enabled on this router (no wamp.cra_key); "
    if not authid:
        return "wampcra needs an authid (the hex SHA-256 of the session id); "
    return ""


class RouterSession:
    """The router's side of WAMP sessions on one transport (`connection`, which sends and
    closes); after GOODBYE the transport may carry a new session."""

    def __init__(self, router, connection):
        self.router = router
        self.connection = connection
        self.state = WAITING
        self.id: int | None = None  # the WAMP session id, while established
        self.peer_roles: dict = {}  # the roles and features the client announced in HELLO
        self.authmethod: str | None = None
        self._cra: CraChallenge | None = None  # the WAMP-CRA challenge sent, while CHALLENGED
        self._close: tuple[int, str] | None = None  # the close to do once GOODBYE is answered

    @property
    def established(self) -> bool:
        return self.state == ESTABLISHED

    # -- input ----------------------------------------------------------------------------

    def receive(self, message) -> None:
        if isinstance(message, wamp.Abort):
            if self.state == CLOSING:  # an ABORT answers our GOODBYE as well: close now
                code, reason = self._close
                self._end(CLOSED)
                self.connection.close_transport(code, reason)
            elif self.state != CLOSED:
                log.info("wamp session aborted by the peer: {reason}", reason=message.reason, connection=self.connection.id)
                self._end(CLOSED)
                self.connection.close_transport(CLOSE_NORMAL, "Session aborted")
            return
        if self.state in (WAITING, CHALLENGED) and not self.connection.bucket.take():
            # Opening sessions costs a store lookup each: HELLO and AUTHENTICATE spend the
            # rate limit too (over it they are dropped; the client's opening times out).
            self._rate_limited(message.MESSAGE_TYPE, None, False)
            return
        if self.state == WAITING:
            if isinstance(message, wamp.Hello):
                self._hello(message)
            else:
                self.violation(f"{_name(message)} before HELLO")
        elif self.state == CHALLENGED:
            if isinstance(message, wamp.Authenticate):
                if self._cra is not None:
                    self._cra_signed(message.signature)
                else:
                    self._ticket(message.signature)
            else:
                self.violation(f"{_name(message)} instead of AUTHENTICATE")
        elif self.state == ESTABLISHED:
            handler = self._handlers.get(type(message))
            if handler is None:
                self.violation(f"{_name(message)} is not a message a client sends in a session")
            elif (isinstance(message, (wamp.Goodbye, wamp.Error)) or (isinstance(message, wamp.Yield) and not message.progress)
                  or self.connection.bucket.take()):
                # A callee's final answers are not limited (the router paced the invocations
                # they answer); one to no invocation of its own costs a token (see _answered);
                # progressive results cost a token each (else one call is an unlimited channel).
                handler(self, message)
            else:
                answered = isinstance(message, (wamp.Call, wamp.Subscribe, wamp.Unsubscribe, wamp.Register,
                                                wamp.Unregister))
                acknowledged = isinstance(message, wamp.Publish) and message.acknowledge
                self._rate_limited(message.MESSAGE_TYPE, message.request, answered or acknowledged)
        elif self.state == CLOSING:
            if isinstance(message, wamp.Goodbye):  # the answer to ours: now close
                code, reason = self._close
                self._end(CLOSED)
                self.connection.close_transport(code, reason)
            # anything else after our GOODBYE is ignored, as the spec says
        elif self.state == AUTHENTICATING:
            self.violation(f"{_name(message)} before WELCOME")

    def _rate_limited(self, kind: int, request: int, answered: bool) -> None:
        """Over the inbound rate limit (as on the legacy namespaces): a request that gets an
        answer gets ERROR `eform.error.rate_limited`, the rest is dropped; past
        `websocket.rate_limit_close_after` refusals in a row the transport closes 1008."""
        router = self.router
        if self.connection.bucket.refused_in_a_row >= router.rate_limit_close_after:
            log.info("closing a wamp session: rate limit", connection=self.connection.id)
            self._end(CLOSED)
            self.connection.close_transport(CLOSE_POLICY, "Rate limit exceeded")
            return
        if answered:
            text = f"Rate limit exceeded: at most {router.rate_limit:g} messages per second"
            self._send(wamp.Error(kind, request, errors.RATE_LIMITED, args=[text]))

    def bad_uri(self, raw: list, reason: str) -> None:
        """A message the decoder refused for an invalid URI: ERROR for a request that can
        get one, ABORT for HELLO, a protocol violation for anything else."""
        kind, request = raw[0], raw[1] if len(raw) > 1 else None
        if kind == wamp.Hello.MESSAGE_TYPE and self.state == WAITING:
            self._abort(errors.INVALID_URI, reason)
        elif kind in _URI_REQUESTS and self.state == ESTABLISHED and type(request) is int and 0 < request <= errors.MAX_ID:
            options = raw[2] if len(raw) > 2 and isinstance(raw[2], dict) else {}
            answered = kind != wamp.Publish.MESSAGE_TYPE or options.get("acknowledge") is True
            if not self.connection.bucket.take():  # refused requests spend the rate limit too
                self._rate_limited(kind, request, answered)
            elif answered:
                self._send(wamp.Error(kind, request, errors.INVALID_URI, args=[reason]))
        else:
            self.violation(reason, "invalid URI")

    def oversized(self, message, size: int, limit: int) -> None:
        """A message over `wamp.max_message_bytes`: a CALL (or an acknowledged PUBLISH) is
        answered ERROR `wamp.error.payload_size_exceeded`; a callee's YIELD or ERROR fails its
        caller's call so; anything else is a protocol violation (ABORT)."""
        text = f"message of {size} bytes is over the limit of {limit} (wamp.max_message_bytes)"
        if self.state != ESTABLISHED:
            self.violation(text, "message over the size limit")
        elif not self.connection.bucket.take():
            self._rate_limited(message.MESSAGE_TYPE, getattr(message, "request", None), False)
        elif isinstance(message, wamp.Call):
            self._send(wamp.Error(wamp.Call.MESSAGE_TYPE, message.request, errors.PAYLOAD_SIZE_EXCEEDED, args=[text]))
        elif isinstance(message, wamp.Publish):
            if message.acknowledge:
                self._send(wamp.Error(wamp.Publish.MESSAGE_TYPE, message.request, errors.PAYLOAD_SIZE_EXCEEDED,
                                      args=[text]))
            else:
                metrics.wamp_refused_publications.labels(errors.PAYLOAD_SIZE_EXCEEDED).inc()
        elif isinstance(message, (wamp.Yield, wamp.Error)):
            self.router.registrations.fail(self.connection, message.request,
                                           WampError(errors.PAYLOAD_SIZE_EXCEEDED, f"the callee's answer: {text}"))
        else:
            self.violation(text, "message over the size limit")

    def violation(self, reason: str, summary: str | None = None) -> None:
        """ABORT `wamp.error.protocol_violation` with `reason`, then close the transport
        (1002). The log gets `summary` when given: `reason` may quote the peer's data."""
        if self.state in (CLOSED, CLOSING):
            return
        log.info("wamp protocol violation: {reason}", reason=summary or reason, connection=self.connection.id)
        self._abort(errors.PROTOCOL_VIOLATION, reason, CLOSE_PROTOCOL_ERROR)

    # -- opening: HELLO, authentication, WELCOME --------------------------------------------

    def _hello(self, hello) -> None:
        if hello.realm != REALM:
            self._abort(errors.NO_SUCH_REALM, f"no realm {hello.realm!r} on this router (its realm is {REALM!r})")
            return
        self.state = AUTHENTICATING
        self.peer_roles = dict(hello.roles or {})
        d = self._authenticate(list(hello.authmethods or ()), hello.authid)
        d.addErrback(self._failed, "authentication")

    @inlineCallbacks
    def _authenticate(self, methods: list[str], authid: str | None = None):
        """The client's methods in its order; then a valid session cookie on its own (a
        browser sends it with the upgrade whatever the client lists)."""
        tried_cookie = False
        for method in [*methods, "cookie"]:
            if method == "ticket":
                self.state = CHALLENGED
                self._send(wamp.Challenge("ticket", {}))
                return
            if method == WAMPCRA and self.router.cra_key and authid:
                self._cra = CraChallenge(authid, new_id(), AUTH_PROVIDER)
                self.state = CHALLENGED
                self._send(wamp.Challenge(WAMPCRA, self._cra.extra()))
                return
            if method == "cookie" and not tried_cookie:
                tried_cookie = True
                cookies = self.connection.cookies
                if not cookies:
                    continue
                found = yield self._lookup(cookies)
                if self.state != AUTHENTICATING:
                    return  # the transport went away meanwhile
                if found is not None:
                    self._welcome(found, "cookie")
                    return
        metrics.auth_failures.labels(metrics.WAMP, "missing").inc()
        self._abort(errors.NOT_AUTHORIZED, "Authentication failed: " + _unusable(methods, authid, self.router.cra_key)
                    + "offer ticket (a session id) or send a session cookie")

    def _ticket(self, ticket: str) -> None:
        self.state = AUTHENTICATING
        d = self._lookup([ticket] if ticket else [])
        d.addCallback(self._authenticated)
        d.addErrback(self._failed, "authentication")

    def _authenticated(self, found, method: str = "ticket", session_id: int | None = None) -> None:
        if self.state != AUTHENTICATING:
            return
        if found is None:
            metrics.auth_failures.labels(metrics.WAMP, "invalid").inc()
            self._abort(errors.NOT_AUTHORIZED, "Authentication failed")
        else:
            self._welcome(found, method, session_id)

    def _cra_signed(self, signature) -> None:
        """AUTHENTICATE to a WAMP-CRA challenge: the signature is checked first, without the
        store (a wrong one and an authid no session has are the same refusal); then the
        session its authid names must be live."""
        challenge, self._cra = self._cra, None
        self.state = AUTHENTICATING
        if not challenge.verify(self.router.cra_key, signature):
            self._authenticated(None)
            return
        d = self._lookup(hashed=challenge.authid)
        d.addCallback(self._authenticated, WAMPCRA, challenge.session)
        d.addErrback(self._failed, "authentication")

    def _lookup(self, candidates=(), hashed: str | None = None):
        """The first valid session among `candidates` (or the one whose id has the hash
        `hashed`); an unavailable store is ABORT `wamp.error.authentication_failed` (and
        None here)."""
        sessions = self.router.sessions
        d = first_valid_session(sessions, candidates) if hashed is None else sessions.lookup_hash(hashed)

        def unavailable(failure):
            log.warn("session store unavailable for a wamp session: {error}", error=failure.getErrorMessage())
            if self.state == AUTHENTICATING:
                metrics.auth_failures.labels(metrics.WAMP, "store_unavailable").inc()
                self._abort(errors.AUTHENTICATION_FAILED, "Session store unavailable, try again")
            return None

        d.addErrback(unavailable)
        return d

    def _welcome(self, session, method: str, session_id: int | None = None) -> None:
        self.connection.session = session
        self.connection.sees_sensitive = self.router.policy.sees_sensitive(session)
        self.id = session_id or new_id()  # WAMP-CRA's challenge named it already
        self.authmethod = method
        self.state = ESTABLISHED
        self.connection.stop_timer()
        self.router.joined(self.connection)
        self._send(
            wamp.Welcome(
                self.id,
                ROUTER_ROLES,
                realm=REALM,
                authid=session.user_id,
                authrole=session.role,
                authmethod=method,
                authprovider=AUTH_PROVIDER,
            )
        )
        log.info("wamp session joined by {authmethod} as {authrole}", authmethod=method, authrole=session.role,
                 connection=self.connection.id)

    # -- the established session's requests ---------------------------------------------------

    def _subscribe(self, request) -> None:
        match = request.match or EXACT
        if not is_uri(request.topic, match):
            self._send(wamp.Error(wamp.Subscribe.MESSAGE_TYPE, request.request, errors.INVALID_URI,
                                  args=[f"invalid topic for {match} match: {request.topic!r}"]))
            return
        try:
            subscription = self.router.broker.subscribe(self.connection, request.topic, match)
        except WampError as e:  # the subscription limit: the session goes on
            self._send(wamp.Error(wamp.Subscribe.MESSAGE_TYPE, request.request, e.uri, args=[e.message], kwargs=e.kwargs))
            return
        self._send(wamp.Subscribed(request.request, subscription.id))
        if request.get_retained:
            for retained, topic in self.router.broker.retained(self.connection, subscription):
                self._send(wamp.Event(
                    subscription.id, retained.publication, args=retained.args or None, kwargs=retained.kwargs or None,
                    retained=True, **subscription.details(topic), **(retained.publisher or {}),
                ))

    def _unsubscribe(self, request) -> None:
        if self.router.broker.unsubscribe(self.connection, request.subscription):
            self._send(wamp.Unsubscribed(request.request))
        else:
            self._send(wamp.Error(wamp.Unsubscribe.MESSAGE_TYPE, request.request, errors.NO_SUCH_SUBSCRIPTION,
                                  args=["no such subscription of this session"]))

    def _publish(self, request) -> None:
        acknowledge = request.acknowledge is True
        session_id = self.id
        d = maybeDeferred(self.router.broker.publish, self.connection, request)
        if acknowledge:
            d.addCallback(lambda publication: self._reply(session_id, wamp.Published(request.request, publication)))
        d.addErrback(self._request_failed, session_id, wamp.Publish.MESSAGE_TYPE, request.request, acknowledge)

    def _call(self, request) -> None:
        """The router's own procedures (`eform.*`) answer here; any other goes to the
        session that registered it, and its YIELD or ERROR comes back as the answer."""
        session_id = self.id
        if request.payload is not None:
            d = maybeDeferred(self._refuse, errors.INVALID_ARGUMENT, "payload transparency is not supported")
        elif is_own(request.procedure):
            d = maybeDeferred(self.router.dealer.call, self.connection, request.procedure, request.args, request.kwargs)
            d.addCallback(lambda args: (args, None))
        elif is_reserved(request.procedure):
            d = maybeDeferred(self._meta_call, request)
        else:
            def progress(args, kwargs):  # one this session's serialization cannot carry is left out
                if self.state == ESTABLISHED and self.id == session_id:
                    self._send(wamp.Result(request.request, args=args, kwargs=kwargs, progress=True))

            d = maybeDeferred(self.router.registrations.call, self.connection, request, progress)
        d.addCallback(lambda result: self._reply(
            session_id, wamp.Result(request.request, args=result[0] or None, kwargs=result[1] or None)))
        d.addErrback(self._request_failed, session_id, wamp.Call.MESSAGE_TYPE, request.request, True)

    def _meta_call(self, request):
        if not self.router.permissions.allows(self.connection.session.role, "call", request.procedure):
            raise WampError(errors.NOT_AUTHORIZED, f"this session may not call {request.procedure}")
        return self.router.meta.call(request.procedure, request.args, request.kwargs).addCallback(lambda args: (args, None))

    def _register(self, request) -> None:
        """REGISTERED once the registry (of the whole deployment) has given the procedure to
        this session; ERROR when it refuses or cannot be reached."""
        session_id = self.id
        d = maybeDeferred(self.router.registrations.register, self.connection, request)
        d.addCallback(lambda registration: self._reply(session_id, wamp.Registered(request.request, registration.id)))
        d.addErrback(self._request_failed, session_id, wamp.Register.MESSAGE_TYPE, request.request, True)

    def _unregister(self, request) -> None:
        if self.router.registrations.unregister(self.connection, request.registration):
            self._send(wamp.Unregistered(request.request))
        else:
            self._send(wamp.Error(wamp.Unregister.MESSAGE_TYPE, request.request, errors.NO_SUCH_REGISTRATION,
                                  args=["no such registration of this session"]))

    def _yield(self, message) -> None:
        self._answered(self.router.registrations.yielded(self.connection, message))

    def _error(self, message) -> None:
        if message.request_type != wamp.Invocation.MESSAGE_TYPE:
            self.violation(f"ERROR to a {message.request_type} request: a client answers only INVOCATION")
            return
        self._answered(self.router.registrations.failed(self.connection, message))

    def _answered(self, known: bool) -> None:
        """An answer to no invocation of this session's (late, after a cancel, or made up)
        is ignored, as the spec says, and costs a token like any message."""
        if not known and not self.connection.bucket.take():
            self._rate_limited(wamp.Yield.MESSAGE_TYPE, None, False)

    def _cancel(self, request) -> None:
        """A call of a client's procedure ends as `mode` says (see Registrations.cancel);
        the router's own procedures answer at once: their RESULT comes as if not canceled."""
        self.router.registrations.cancel(self.connection, request)

    def _goodbye(self, request) -> None:
        self._send(wamp.Goodbye(errors.GOODBYE_AND_OUT))
        self._end(WAITING)
        self.connection.await_hello()

    _handlers = {
        wamp.Subscribe: _subscribe,
        wamp.Unsubscribe: _unsubscribe,
        wamp.Publish: _publish,
        wamp.Call: _call,
        wamp.Register: _register,
        wamp.Unregister: _unregister,
        wamp.Yield: _yield,
        wamp.Error: _error,
        wamp.Cancel: _cancel,
        wamp.Goodbye: _goodbye,
    }

    @staticmethod
    def _refuse(uri: str, message: str):
        raise WampError(uri, message)

    def _reply(self, session_id: int, message) -> None:
        """Send an answer to a request, unless the session it belongs to has ended; an
        answer this session's serialization cannot carry (a peer's payload) becomes ERROR
        `wamp.error.invalid_argument`, so the request is always answered."""
        if self.state == ESTABLISHED and self.id == session_id and not self.connection.send_message(message):
            kind = wamp.Call.MESSAGE_TYPE if isinstance(message, wamp.Result) else message.request_type
            self._send(wamp.Error(kind, message.request, errors.INVALID_ARGUMENT,
                                  args=["the answer cannot be carried in this session's serialization"]))

    def _request_failed(self, failure, session_id: int, kind: int, request: int, answer: bool) -> None:
        if failure.check(WampError):
            error = failure.value
            uri, args, kwargs = error.uri, [error.message], error.kwargs
        else:
            log.failure("wamp request failed", failure, connection=self.connection.id)
            uri, args, kwargs = errors.INTERNAL, ["internal error"], None
        if failure.check(WampError) and failure.value.payload is not None:
            args = failure.value.payload or None  # a callee's ERROR, as it sent it
        if answer:
            self._reply(session_id, wamp.Error(kind, request, uri, args=args, kwargs=kwargs))
        elif kind == wamp.Publish.MESSAGE_TYPE:
            # Not acknowledged: the spec allows no answer, but it is never silent here.
            metrics.wamp_refused_publications.labels(uri).inc()
            log.debug("wamp publish refused without an answer (not acknowledged): {error}", error=uri,
                      connection=self.connection.id)

    # -- closing ------------------------------------------------------------------------------

    def goodbye(self, code: int, reason: str) -> None:
        """Router-initiated end: GOODBYE (`system_shutdown` for 1001/1012), then close the
        transport with `code` once the client answers."""
        if self.state != ESTABLISHED:
            self.connection.close_transport(code, reason)
            return
        uri = errors.SYSTEM_SHUTDOWN if code in SHUTDOWN_CODES else errors.CLOSE_REALM
        self._send(wamp.Goodbye(uri, reason))
        self._end(CLOSING)
        self._close = (code, reason)
        self.connection.await_goodbye(code, reason)

    def transport_lost(self) -> None:
        self._end(CLOSED)

    def _abort(self, reason: str, text: str, code: int = CLOSE_NORMAL) -> None:
        self._send(wamp.Abort(reason, text))
        self._end(CLOSED)
        self.connection.close_transport(code, "Session aborted")

    def _end(self, state: str) -> None:
        """Leave ESTABLISHED before the router forgets the session: what its leaving ends
        (calls it made, canceled) must not be answered after its GOODBYE."""
        was, self.state = self.state, state
        if was == ESTABLISHED:
            session_id, self.id = self.id, None
            self.router.left(self.connection, session_id)

    def _send(self, message) -> None:
        self.connection.send_message(message)

    def _failed(self, failure, what: str) -> None:
        log.failure("wamp {what} failed", failure, what=what, connection=self.connection.id)
        if self.state not in (CLOSED, CLOSING):
            self._abort(errors.AUTHENTICATION_FAILED, "internal error")
