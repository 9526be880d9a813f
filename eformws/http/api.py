"""The HTTP API (docs/protocol.md section 7) as a Klein app: status, broadcast, events, health,
healthz, and the session's own view and session administration; each route reads the
request, calls one thing and answers JSON; errors become bodies in one place."""

from __future__ import annotations

import heapq
import hmac
import time
from typing import Any, Callable

from klein import Klein
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.routing import RequestRedirect

from eformws.backends.redis import RedisUnavailable
from eformws.core import metrics, wire
from eformws.delivery.broadcasts import BroadcastError, UnknownNamespace, check_broadcast, send_broadcast
from eformws.delivery.publisher import check_idempotency_key
from eformws.events import ValidationError
from eformws.events.store import IdempotencyConflict
from eformws.http.bodies import REASONS, HTTPError, error_body, json_body, require, require_field, unavailable_message
from eformws.http.batch import append_batch, check_batch
from eformws.http.site import logged_path
from eformws.sessions import SessionError, check_session_request, first_valid_session, issued
from eformws.sessions.credentials import bearer_token, candidates, cookie_values
from eformws.sessions.sqlite import as_reference
from eformws.transports.origins import origin_allowed



RECENT_WINDOW = 30.0  # seconds of events /api/websocket/health returns ...
RECENT_LIMIT = 20  # ... at most this many
STATUS_MAX_AGE = 1.0  # seconds a status answer of many rooms is answered again before it is rebuilt
HEALTH_CHECK_TIMEOUT = 2.0  # seconds /healthz waits for a store's ping (they run at once)
LAST_TIMESTAMP = 253402300799.999  # 9999-12-31T23:59:59.999Z, the last time a timestamp can show
# How a refused session creation names the body's fields (the `field` of the 400, and its message).
SESSION_FIELDS = {name: f"body/{name}" for name in ("user_id", "role", "kiosk_id", "ttl")}


def _json(request, status: int, body: Any) -> bytes:
    return _json_encoded(request, status, wire.dumps(body))


def _json_encoded(request, status: int, raw: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return raw


def _headers(request, name: bytes) -> list[str]:
    return [v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(name, [])]


def request_candidates(request, cookie_names) -> list[str]:
    """Session-id candidates of an HTTP request, as for a WebSocket handshake."""
    query = [v.decode("utf-8", "replace") for v in request.args.get(b"sessionId", [])]
    return candidates(_headers(request, b"cookie"), _headers(request, b"authorization"), query, cookie_names)


def _timestamp(at: float) -> str:
    """A stored time (an expiry, a creation) as `wire.js_timestamp` writes it; one it cannot
    write (a record the panel wrote with a year past 9999, say) is shown as the nearest it can."""
    return wire.js_timestamp(min(at, LAST_TIMESTAMP) if at >= 0 else 0.0)


def _listed(row, now: float) -> dict:
    """A session as GET /api/websocket/sessions lists it: by reference, never by id."""
    return {
        "ref": row.ref,
        "user_id": row.user_id,
        "role": row.role,
        "kiosk_id": row.kiosk_id,
        "created_at": _timestamp(row.created_at),
        "expires_at": _timestamp(row.expires_at),
        "state": row.state(now),
    }


def _who(session) -> str:
    """Who did something, for the log: the session's user, or the API token (never either's secret)."""
    return "api token" if session is None else session.user_id


def _add_up(nodes: list[dict], field: str, paths: dict) -> dict:
    """Per-path connection counts summed over every node's entry (every known path listed)."""
    total = {path: 0 for path in paths}
    for node in nodes:
        for path, count in node.get(field, {}).items():
            total[path] = total.get(path, 0) + count
    return total


class Snapshot:
    """What `build` fires with, built at most once per `max_age` seconds: callers within that
    time, or while a build is under way, share one build (a failed build is not kept)."""

    def __init__(self, build: Callable[[], Any], max_age: float, clock: Callable[[], float] = time.monotonic):
        self._build = build
        self._max_age = max_age
        self._clock = clock
        self._at: float | None = None
        self._value: Any = None
        self._waiting: list[Deferred] | None = None  # while a build is under way

    def get(self) -> Deferred:
        if self._waiting is None and self._at is not None and self._clock() - self._at < self._max_age:
            return succeed(self._value)
        mine = Deferred()
        if self._waiting is not None:
            self._waiting.append(mine)
            return mine
        self._waiting = [mine]
        started = self._clock()
        maybeDeferred(self._build).addBoth(self._built, started)
        return mine

    def _built(self, result, started: float) -> None:
        waiting, self._waiting = self._waiting, None
        if not isinstance(result, Failure):
            self._at, self._value = started, result
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class Api:
    app = Klein()
    # `//` in a path is not a route: werkzeug would answer it with a redirect (Klein turned
    # that into a 500, with the path in the log); it is a 404 as any other unknown path.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(self, hub, sessions, config, policy, events, event_store, bus=None, nodes=None, recheck_sessions=None):
        self.hub = hub
        # Closes this process's connections whose session has gone (SessionWatch.check).
        self.recheck_sessions = recheck_sessions
        self.bus = bus
        self.nodes = nodes
        self.sessions = sessions
        self.policy = policy
        self.events = events
        self.event_store = event_store
        self.api_tokens = [t.encode("utf-8") for t in config.get("auth", "api_tokens")]
        self.default_ttl = config.get("sessions", "default_ttl")
        self.cra_key = config.get("wamp", "cra_key")  # a new session's WAMP-CRA secret is issued with its id
        self.cookie_names = tuple(config.get("auth", "cookie_names"))
        self.allowed_origins = frozenset(config.get("server", "allowed_origins"))
        self.max_body_bytes = config.get("server", "max_body_bytes")
        self.status_room_limit = config.get("server", "status_room_limit")
        self._status_snapshots = {full: Snapshot(lambda full=full: self._encoded_status(full), STATUS_MAX_AGE)
                                  for full in (False, True)}

    def resource(self):
        return self.app.resource()

    @app.handle_errors(HTTPError)
    def _http_error(self, request, failure):
        error = failure.value
        return _json(request, error.status, error_body(error.status, error.message, **error.extra))

    @app.handle_errors(RedisUnavailable)
    def _redis_unavailable(self, request, failure):
        """A store in Redis that cannot answer now: 503, try again. An emit that could not be
        written in time says so (and whether it may have been stored) in its own words."""
        error = failure.value
        self.log.warn("{path}: redis unavailable ({error})", path=logged_path(request.path.decode("latin-1")),
                      error=type(error).__name__)
        return _json(request, 503, error_body(503, unavailable_message(error)))

    @app.handle_errors
    def _unexpected(self, request, failure):
        status = 404 if failure.check(RequestRedirect) else getattr(failure.value, "code", 500)
        if status not in REASONS:
            status = 500
        if status == 500:  # the path as the access log writes it: never a session id
            self.log.failure("unexpected error in {path}", failure=failure,
                             path=logged_path(request.path.decode("latin-1")))
        return _json(request, status, {"statusCode": status, "error": REASONS[status], "message": REASONS[status]})

    # -- credentials ---------------------------------------------------------

    def _is_api_token(self, request) -> bool:
        for token in bearer_token(_headers(request, b"authorization")):
            encoded = token.encode("utf-8")
            if any(hmac.compare_digest(encoded, known) for known in self.api_tokens):
                return True
        return False

    @inlineCallbacks
    def require_session(self, request):
        """The request's valid session; else 401 (counted in the auth-failure metric)."""
        present = request_candidates(request, self.cookie_names)
        if not present:
            metrics.auth_failures.labels(metrics.HTTP, "missing").inc()
            raise HTTPError(401, "Authentication required")
        try:
            session = yield metrics.timed(first_valid_session(self.sessions, present), "session_store", "lookup")
        except RedisUnavailable:
            metrics.auth_failures.labels(metrics.HTTP, "store_unavailable").inc()
            raise
        if session is None:
            metrics.auth_failures.labels(metrics.HTTP, "invalid").inc()
            raise HTTPError(401, "Authentication failed")
        return session

    @inlineCallbacks
    def require_privileged(self, request, changes: bool = True, may: Callable | None = None):
        """An API token (None), or a session the policy's `may` allows (default: that it may
        publish); else 401 or 403. A request that `changes` something and is
        authenticated by a cookie must not be cross-site (a read needs no such check: a
        cross-site page cannot read the answer)."""
        if self._is_api_token(request):
            return None
        session = yield self.require_session(request)
        if changes and session.id in cookie_values(_headers(request, b"cookie"), self.cookie_names):
            self._refuse_cross_site(request)
        if not (may or self.policy.may_publish)(session):
            metrics.auth_failures.labels(metrics.HTTP, "forbidden").inc()
            raise HTTPError(403, "This session may not do that")
        return session

    def _refuse_cross_site(self, request) -> None:
        """A browser sends the session cookie with any site's form post: a cookie-authenticated
        change must be JSON (which a cross-site page cannot send without a CORS preflight,
        never granted here) and, with an allow-list, come from an allowed origin."""
        content_type = (_headers(request, b"content-type") or [""])[0].split(";")[0].strip().lower()
        if content_type != "application/json":
            metrics.auth_failures.labels(metrics.HTTP, "cross_site").inc()
            raise HTTPError(403, "A request authenticated by a cookie must send Content-Type: application/json")
        origin = (_headers(request, b"origin") or [""])[0]
        host = (_headers(request, b"host") or [""])[0]
        same_origin = origin.partition("://")[2] == host
        if not same_origin and not origin_allowed(self.allowed_origins, origin):
            metrics.auth_failures.labels(metrics.HTTP, "cross_site").inc()
            raise HTTPError(403, "Origin not allowed")

    # -- routes --------------------------------------------------------------

    def status(self, full: bool = False) -> Deferred:
        """The status object (this route's, and `eform.status`): at most `status_room_limit`
        rooms per namespace, the largest, unless `full`. Built per call while every namespace
        has no more rooms than that; past it (building costs as many steps as there are rooms)
        at most once per `STATUS_MAX_AGE`, answered again meanwhile, timestamp included."""
        return self._status_answer(full).addCallback(lambda answer: answer[0])

    def _status_answer(self, full: bool) -> Deferred:
        """Fires with (the status object, its JSON or None when it was built for this call)."""
        limit = self.status_room_limit
        if all(len(ns.rooms) <= limit for ns in self.hub.namespaces.values()):
            return self._build_status(full).addCallback(lambda body: (body, None))
        return self._status_snapshots[full].get()

    def _encoded_status(self, full: bool) -> Deferred:
        return self._build_status(full).addCallback(lambda body: (body, wire.dumps(body)))

    def _rooms(self, full: bool) -> tuple[dict, dict, bool]:
        """(room sizes per namespace, the number of rooms per namespace, whether any list is
        cut): past `status_room_limit` rooms, unless `full`, the largest that many."""
        limit = self.status_room_limit
        rooms, counts, cut = {}, {}, False
        for path, ns in self.hub.namespaces.items():
            counts[path] = len(ns.rooms)
            listed = ns.rooms.items()
            if not full and len(ns.rooms) > limit:
                listed = heapq.nlargest(limit, listed, key=lambda item: len(item[1]))
                cut = True
            rooms[path] = {room: len(members) for room, members in listed}
        return rooms, counts, cut

    @inlineCallbacks
    def _build_status(self, full: bool):
        """The status object; with several processes, counts add up their registry entries."""
        hub = self.hub
        counts = hub.counts()
        namespaces, endpoints = counts.namespaces, counts.endpoints
        nodes = None
        if self.nodes is not None:
            try:
                nodes = yield self.nodes.nodes()
            except Exception:
                nodes = [dict(self.nodes.local(), stale=True)]  # Redis unreachable: this process only
            namespaces = _add_up(nodes, "namespaces", namespaces)
            endpoints = _add_up(nodes, "endpoints", endpoints)
        rooms, room_counts, cut = self._rooms(full)
        body = {
            "status": "active",
            "namespaces": namespaces,
            "total_connections": sum(namespaces.values()) + sum(endpoints.values()),
            "latency_metrics": hub.latency_metrics(),
            "timestamp": wire.js_timestamp(),
            "rooms": rooms,
            "room_counts": room_counts,
            "rooms_truncated": cut,
            "endpoints": endpoints,
        }
        if nodes is not None:
            body["nodes"] = nodes
        return body

    @app.route("/api/websocket/status", methods=["GET"])
    @inlineCallbacks
    def status_route(self, request):
        """`?rooms=all`: every room of every namespace, for those who may broadcast."""
        asked = request.args.get(b"rooms")
        if asked is not None and asked != [b"all"]:
            raise HTTPError(400, "rooms must be all, or not given")
        full = asked is not None
        if full:
            yield self.require_privileged(request, changes=False)
        body, raw = yield self._status_answer(full)
        return _json(request, 200, body) if raw is None else _json_encoded(request, 200, raw)

    @app.route("/api/websocket/broadcast", methods=["POST"])
    @inlineCallbacks
    def broadcast_route(self, request):
        yield self.require_privileged(request)
        body = json_body(request, self.max_body_bytes)
        namespace = require(body, "namespace", str, "string")
        event = require(body, "event", str, "string")
        data = require(body, "data", dict, "object")
        room = require(body, "room", str, "string", required=False)
        if not event:
            raise HTTPError(400, "body/event must NOT have fewer than 1 characters")
        try:
            check_broadcast(event, data, room, prefix="body/")
        except BroadcastError as e:
            raise HTTPError(400, str(e)) from None
        try:
            answer = yield send_broadcast(self.events, namespace, event, data, room)
        except UnknownNamespace as e:
            raise HTTPError(404, str(e)) from None
        return _json(request, 200, answer)

    @app.route("/api/websocket/events", methods=["POST"])
    @inlineCallbacks
    def events_route(self, request):
        yield self.require_privileged(request)
        keys = _headers(request, b"idempotency-key")
        if len(keys) > 1:
            raise HTTPError(400, "Idempotency-Key must be given once")
        try:
            key = check_idempotency_key(keys[0]) if keys else None
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        body = json_body(request, self.max_body_bytes, arrays=True)
        if isinstance(body, list):
            if key is not None:
                raise HTTPError(400, "Idempotency-Key applies to one event: give each item of a batch its own "
                                     "idempotency_key")
            check_batch(body)
            answers = yield append_batch(self.events, body)
            return _json(request, 200, {"results": answers})
        event_type = require(body, "type", str, "string")
        require(body, "data", dict, "object")
        try:
            appended = yield self.events.append(event_type, body["data"], key)
        except ValidationError as e:
            raise HTTPError(400, str(e), field=e.field) from None
        except IdempotencyConflict:
            raise HTTPError(409, "Idempotency-Key was already used for a different event") from None
        if appended.replayed:
            request.setHeader(b"Idempotent-Replayed", b"true")
        return _json(request, 201, appended.envelope)

    def _sendable(self, envelope: dict) -> bool:
        """Whether a stored event can be sent; one that cannot (NaN, say, written by hand or
        by an old version) is left out and logged, as replay leaves it out."""
        if wire.sendable(envelope):
            return True
        self.log.warn("left out event {seq}: it cannot be framed", seq=envelope.get("seq"))
        return False

    @app.route("/api/websocket/health", methods=["GET"])
    @inlineCallbacks
    def health_route(self, request):
        session = yield self.require_session(request)
        statistics = yield self.event_store.stats()
        recent = yield self.event_store.recent(None, RECENT_WINDOW, RECENT_LIMIT)
        hub = self.hub
        counts = hub.counts()
        if not self.policy.sees_sensitive(session):
            recent = [hub.redactor.redact(envelope) for envelope in recent]
        recent = [envelope for envelope in recent if self._sendable(envelope)]
        return _json(
            request,
            200,
            {
                "websocket_available": True,
                "connection_health": {
                    "total_connections": counts.total,
                    "namespaces": counts.namespaces,
                    "latency_metrics": hub.latency_metrics(),
                },
                "event_statistics": statistics,
                "events": recent,
                "timestamp": wire.js_timestamp(),
            },
        )

    # -- sessions ------------------------------------------------------------

    @app.route("/api/websocket/session", methods=["GET"])
    @inlineCallbacks
    def session_route(self, request):
        """Who the request's session is and what its role may do; never its id."""
        session = yield self.require_session(request)
        return _json(
            request,
            200,
            {
                "user_id": session.user_id,
                "role": session.role,
                "kiosk_id": session.kiosk_id,
                "expires_at": _timestamp(session.expires_at),
                "may": self.policy.abilities(session),
            },
        )

    def _require_session_admin(self, request, changes: bool = True) -> Deferred:
        """An API token (None) or a session whose role is in `auth.session_admin_roles`."""
        return self.require_privileged(request, changes, self.policy.may_manage_sessions)

    @app.route("/api/websocket/sessions", methods=["GET"])
    @inlineCallbacks
    def sessions_route(self, request):
        """Every stored session, oldest first, by reference (never by id)."""
        yield self._require_session_admin(request, changes=False)
        rows = yield self.sessions.list()
        now = time.time()
        return _json(request, 200, {"sessions": [_listed(row, now) for row in rows]})

    @app.route("/api/websocket/sessions", methods=["POST"])
    @inlineCallbacks
    def create_session_route(self, request):
        """A new session, by the rules of `eformws sessions create`; the only answer that
        ever shows a session id."""
        admin = yield self._require_session_admin(request)
        body = json_body(request, self.max_body_bytes)
        user_id = require_field(body, "user_id", str, "string")
        role = require_field(body, "role", str, "string")
        kiosk_id = require_field(body, "kiosk_id", str, "string", required=False)
        ttl = require_field(body, "ttl", (int, float), "number", required=False)
        ttl = self.default_ttl if ttl is None else ttl
        try:
            check_session_request(user_id, role, kiosk_id, ttl, SESSION_FIELDS)
        except SessionError as e:
            raise HTTPError(400, str(e), field=SESSION_FIELDS[e.field]) from None
        session = yield self.sessions.create(user_id, role, kiosk_id, float(ttl))
        answer = issued(session, self.cra_key)
        self.log.info("session {ref} created for {user_id} ({role}) by {by}", ref=answer["ref"], user_id=user_id,
                      role=role, by=_who(admin))
        return _json(request, 201, answer)

    @app.route("/api/websocket/sessions/<ref>", methods=["DELETE"])
    @inlineCallbacks
    def revoke_session_route(self, request, ref):
        """Revoke by listed reference (never by id); this process's connections of that
        session are closed at once, other processes' at their next recheck."""
        admin = yield self._require_session_admin(request)
        if as_reference(ref) is None:  # a session id has no place in a URL (access logs keep paths)
            raise HTTPError(400, "Give the reference GET /api/websocket/sessions lists, not a session id")
        row = yield self.sessions.revoke_row(ref)
        if row is None:
            raise HTTPError(404, "No live session matches that reference")
        self.log.info("session {ref} of {user_id} ({role}) revoked by {by}", ref=row.ref, user_id=row.user_id,
                      role=row.role, by=_who(admin))
        if self.recheck_sessions is not None:
            self.recheck_sessions().addErrback(
                lambda failure: self.log.failure("closing the connections of a revoked session", failure=failure)
            )
        return _json(request, 200, {"revoked": 1})

    @app.route("/healthz", methods=["GET"])
    @inlineCallbacks
    def healthz_route(self, request):
        """The stores pinged at once, each for at most HEALTH_CHECK_TIMEOUT (a store in Redis
        not reached yet would otherwise wait for its first connection), and the bus."""
        from twisted.internet import reactor

        parts = {"session_store": self.sessions, "event_store": self.event_store}
        bus_healthy = None if self.bus is None else self.bus.healthy  # None: the bus of one process (IBus)
        if bus_healthy:
            parts["redis_bus"] = self.bus  # up as far as it knows: does Redis answer now?
        pings = [maybeDeferred(part.ping).addTimeout(HEALTH_CHECK_TIMEOUT, reactor) for part in parts.values()]
        results = yield DeferredList(pings, consumeErrors=True)
        checks = {}
        for name, (ok, result) in zip(parts, results):
            if ok:
                checks[name] = "ok"
            elif result.check(TimeoutError, CancelledError):
                checks[name] = f"unavailable: no answer within {HEALTH_CHECK_TIMEOUT:g} s"
            else:
                checks[name] = f"unavailable: {result.value}"
        if bus_healthy is False:
            refused = self.bus.write_error
            checks["redis_bus"] = (
                f"unavailable: redis refuses writes ({refused}), delivering locally and buffering" if refused
                else "unavailable: redis unreachable, delivering locally and buffering"
            )
        healthy = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if healthy else "unavailable", "checks": checks, "timestamp": wire.js_timestamp()}
        return _json(request, 200 if healthy else 503, body)
