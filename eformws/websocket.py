"""The legacy JSON WebSocket protocol (PROTOCOL.md sections 2-5): handshake checks and
session auth, client-message dispatch and limits; one Autobahn factory per namespace."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from zope.interface import implementer

from eformws import metrics, wire
from eformws.flow import CLOSE_TRY_AGAIN_LATER, SLOW_CONSUMER, SlowConsumerGuard
from eformws.hub import IConnection, IFraming, Namespace
from eformws.origins import origin_allowed
from eformws.ratelimit import TokenBucket
from eformws.replay import EventFrames, RecentEvents
from eformws.sessions import first_valid_session
from eformws.sessions.credentials import candidates
from eformws.store import EventFilter, Position, Resumption, parse_cursor

log = Logger(namespace="eformws.websocket")

RECEIVED = metrics.messages_received.labels(metrics.WEBSOCKET)

CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
EVENT_LOG_UNAVAILABLE = "Event log unavailable"


@implementer(IFraming)
class JsonFraming:
    """Legacy clients get the envelope itself as one unmasked, uncompressed text frame."""

    def prepare(self, message):
        frame = PreparedMessage(message.payload, False, False, True)
        frame.position = message.position  # structured events have one
        return frame


JSON_FRAMING = JsonFraming()


@dataclass
class WebSocketSettings:
    """What every legacy connection needs from the configuration and the running parts."""

    hub: object
    sessions: object
    cookie_names: tuple[str, ...]
    allowed_origins: frozenset[str]
    max_connections: int
    max_rooms: int
    rate_limit: float
    rate_burst: int
    rate_limit_close_after: int
    restricted_roles: frozenset[str]
    event_store: object
    replay_window: float
    replay_limit: int
    resume_limit: int
    max_unsent_bytes: int
    sensitive_roles: frozenset[str]
    replay: RecentEvents
    frames: EventFrames

    @classmethod
    def from_config(cls, config, hub, sessions, event_store):
        return cls(
            hub=hub,
            sessions=sessions,
            cookie_names=tuple(config.get("auth", "cookie_names")),
            allowed_origins=frozenset(config.get("server", "allowed_origins")),
            max_connections=config.get("server", "max_connections"),
            max_rooms=config.get("websocket", "max_rooms"),
            rate_limit=config.get("websocket", "rate_limit"),
            rate_burst=config.get("websocket", "rate_burst"),
            rate_limit_close_after=config.get("websocket", "rate_limit_close_after"),
            restricted_roles=frozenset(config.get("auth", "restricted_roles")),
            event_store=event_store,
            replay_window=config.get("events", "replay_window"),
            replay_limit=config.get("events", "replay_limit"),
            resume_limit=config.get("events", "resume_limit"),
            max_unsent_bytes=config.get("websocket", "max_unsent_bytes"),
            sensitive_roles=frozenset(config.get("auth", "sensitive_roles")),
            replay=RecentEvents(event_store, hub, config.get("events", "replay_window"), config.get("events", "replay_limit")),
            frames=EventFrames(hub.redactor),
        )


class Admission:
    """Counts connections from handshake to close, across namespaces and `/wamp`, against
    `server.max_connections`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def admit(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1


def handshake_candidates(request, cookie_names) -> list[str]:
    headers = request.headers
    return candidates(
        [headers["cookie"]] if "cookie" in headers else [],
        [headers["authorization"]] if "authorization" in headers else [],
        request.params.get("sessionId", []),
        cookie_names,
    )


class GatewayProtocol(WebSocketServerProtocol):
    """What every WebSocket connection of the gateway shares (legacy namespaces and WAMP):
    handshake refusals without the query string, closing with any code, and `closed`."""

    def __init__(self):
        super().__init__()
        self._closed_waiters: list[Deferred] | None = []  # None once the connection is gone

    def failHandshake(self, reason, code=400, responseHeaders=None):
        """Autobahn quotes the request line in some refusal reasons (a request line that it
        splits differently from Twisted, e.g. at a NEL or no-break space byte), then logs the
        reason and sends it as the HTTP reason phrase: cut it at the query string, which
        may hold a session id."""
        head, query, _ = reason.partition("?")
        if query:
            reason = head + "?<query removed>"
        return super().failHandshake(reason, code, responseHeaders)

    def close_with(self, code: int, reason: str) -> None:
        """Close with any code (Autobahn's sendClose allows only 1000 and 3000-4999)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.dropConnection(abort=True)

    def abort(self) -> None:
        self.dropConnection(abort=True)

    @property
    def closed(self):
        """A new Deferred that fires once the connection is gone and out of the hub.
        (Autobahn's `is_closed` fires before `onClose`, while the hub still has it.)"""
        if self._closed_waiters is None:
            return succeed(self)
        d = Deferred()
        self._closed_waiters.append(d)
        return d

    def _gone_for_good(self) -> None:
        """Fire `closed`: call last in connectionLost, once out of every registry."""
        waiters, self._closed_waiters = self._closed_waiters or [], None
        for d in waiters:
            d.callback(self)


@implementer(IConnection)
class LegacyProtocol(GatewayProtocol):
    framing = JSON_FRAMING

    def __init__(self):
        super().__init__()
        self.id = None
        self.session = None
        self.rooms: set[str] = set()
        self._refusal: str | None = None
        self._admitted = False
        self._registered = False
        self._bucket: TokenBucket | None = None
        self._since = None  # (seq, epoch) of ?since= and &epoch=
        self._wants_replay = True  # ?replay=false: none
        self._held: list | None = None  # frames held back while replaying or resuming
        self._cursor: Position | None = None  # the newest structured event this client has (sent or resumed past)
        self._guard: SlowConsumerGuard | None = None
        self.sees_sensitive = False

    @property
    def namespace(self) -> str:
        return self.factory.namespace.path

    # -- handshake -----------------------------------------------------------

    def onConnect(self, request):
        settings = self.factory.settings
        if not origin_allowed(settings.allowed_origins, request.origin):
            raise ConnectionDeny(403, "Origin not allowed")
        if not self.factory.admission.admit():
            raise ConnectionDeny(503, "Too many connections")
        self._admitted = True
        if settings.hub.position is None:
            # The event log has not answered since this process started: where this client
            # starts could not be told, so come back in a moment.
            raise ConnectionDeny(503, EVENT_LOG_UNAVAILABLE)
        since = request.params.get("since")
        epoch = request.params.get("epoch")
        self._since = (since[0], epoch[0] if epoch else None) if since else None
        self._wants_replay = request.params.get("replay", ["true"])[0] not in ("false", "0")
        present = handshake_candidates(request, settings.cookie_names)
        if not present:
            self._authenticated(None, present)
            return None
        d = metrics.timed(first_valid_session(settings.sessions, present), "session_store", "lookup")
        d.addCallbacks(self._authenticated, self._store_unavailable, callbackArgs=(present,))
        return d

    def _store_unavailable(self, failure):
        """The session store could not answer (Redis down): refuse with 503, try again."""
        log.warn("session store unavailable for a handshake: {error}", error=failure.getErrorMessage())
        metrics.auth_failures.labels(metrics.WEBSOCKET, "store_unavailable").inc()
        raise ConnectionDeny(503, "Session store unavailable")

    def _authenticated(self, session, present) -> None:
        namespace: Namespace = self.factory.namespace
        if namespace.require_auth:
            if session is None:
                self._refusal = "Authentication failed" if present else "Authentication required"
                metrics.auth_failures.labels(metrics.WEBSOCKET, "invalid" if present else "missing").inc()
            elif session.role not in namespace.roles:
                self._refusal = "Forbidden"
                metrics.auth_failures.labels(metrics.WEBSOCKET, "forbidden").inc()
        self.session = session
        return None

    def onOpen(self):
        if self._refusal is not None:
            log.info(
                "refused connection on {namespace}: {reason}",
                namespace=self.namespace,
                reason=self._refusal,
            )
            self.close(CLOSE_POLICY, self._refusal)
            return
        settings = self.factory.settings
        hub = settings.hub
        self.id = str(uuid.uuid4())
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        self._guard = SlowConsumerGuard(settings.max_unsent_bytes)
        self.sees_sensitive = self.session is not None and self.session.role in settings.sensitive_roles
        hub.add(self)
        self._registered = True
        # From here on every structured event this process delivers reaches this client
        # live: everything after this position, nothing up to it.
        self._cursor = hub.position
        if self.factory.namespace.echo:
            return  # an echo says nothing of its own
        connection = {
            "connectionId": self.id,
            "namespace": self.namespace,
            "authenticated": self.session is not None,
            "timestamp": wire.js_timestamp(),
        }
        if self._cursor is not None:
            connection["epoch"] = self._cursor.epoch
            if self._since is None:
                connection["seq"] = str(self._cursor.seq)
        self._send(wire.direct("connection", connection))
        default_room = self.factory.namespace.default_room
        if default_room is not None:
            hub.join(self, default_room)
            self._send(wire.direct("room_joined", {"room": default_room}))
        if self._since is not None:
            self._resume(*self._since)  # without a default room: no events, but `resumed` says where it stands
        elif default_room is not None and settings.replay_limit and self._wants_replay:
            self._replay()

    # -- catching up: replay on connect, resume ------------------------------------------

    def _filter(self) -> EventFilter:
        return EventFilter(self.namespace, frozenset(self.rooms))

    def _catch_up(self, query, finish) -> None:
        """Hold live frames back while `query` runs (what it answers ends where live delivery
        began), send what it found, then every held frame, then whatever `finish` sends."""
        self._held = []
        d = query()
        d.addCallback(self._caught_up, finish)
        d.addErrback(self._catch_up_failed, finish)

    def _caught_up(self, found, finish) -> None:
        if self.state != self.STATE_OPEN:
            # The client left (or the server is closing it) while the store answered:
            # nothing may be sent any more, and sendMessage would raise Disconnected.
            self._held = None
            return
        events = found.events if isinstance(found, Resumption) else found
        frames = self.factory.settings.frames
        for envelope in events:
            self._write(frames.frame(envelope, self.sees_sensitive))
        held, self._held = self._held or [], None
        for frame in held:
            self.send(frame)
        if finish is not None:
            finish(found, len(events))

    def _catch_up_failed(self, failure, finish) -> None:
        """A replay that fails is left out (nothing is claimed); a resume that fails is not
        answered `recovered:false` (nothing is known to be lost): the client is closed 1013
        to resume again in a moment."""
        log.warn("event store query failed for a connection on {namespace}: {error}",
                 namespace=self.namespace, error=failure.getErrorMessage())
        if finish is None:
            self._caught_up([], None)
            return
        self._held = None
        self.close(CLOSE_TRY_AGAIN_LATER, EVENT_LOG_UNAVAILABLE)

    def _replay(self) -> None:
        settings = self.factory.settings
        metrics.replays.inc()
        self._catch_up(lambda: metrics.timed(settings.replay.recent(self._filter()), "event_store", "recent"), None)

    def _resume(self, cursor, epoch=None) -> None:
        """Resume from `cursor` (of `epoch`): the events after it up to where this client's
        live delivery began; when that cannot be done, the replay a new connection gets,
        and `resumed` says recovered false."""
        settings = self.factory.settings
        start = settings.hub.position  # everything after it reaches this client live (held meanwhile)

        def query():
            d = metrics.timed(
                settings.event_store.since(cursor, epoch, self._filter(), settings.resume_limit, start),
                "event_store", "since",
            )
            d.addCallback(recovered_or_replay)
            return d

        def recovered_or_replay(found: Resumption):
            if found.recovered:
                since, current = parse_cursor(cursor), self._cursor
                if current is not None and since is not None and since > current.seq:
                    self._cursor = Position(found.latest.epoch, since)  # the client has up to there
                return found
            if not settings.replay_limit:
                return found
            # Up to where this catch-up started: what came after is held, sent after it.
            d = metrics.timed(settings.replay.recent(self._filter(), start), "event_store", "recent")
            d.addCallback(lambda replayed: Resumption(replayed, False, found.latest))
            return d

        def resumed(found: Resumption, count: int) -> None:
            metrics.resumes.labels("true" if found.recovered else "false").inc()
            data = {"recovered": found.recovered, "count": count}
            position = self._cursor
            current = settings.hub.position
            if position is not None and current is not None and current.epoch == position.epoch \
                    and current.seq > position.seq:
                position = self._cursor = current  # every event up to it reached this client, or was not its
            if position is None:
                position = found.latest
            if position is not None:
                data["seq"] = str(position.seq)
                data["epoch"] = position.epoch
            self._send(wire.direct("resumed", data))

        self._catch_up(query, resumed)

    # -- IConnection -----------------------------------------------------------

    def send(self, frame) -> None:
        """A frame delivered live (held while catching up)."""
        if self._held is not None:
            self._held.append(frame)
        elif frame.position is None or self._new_to_client(frame.position):
            self._write(frame)

    def _new_to_client(self, position) -> bool:
        """Whether a structured event is past what this client has (it may have resumed past
        it); the cursor then moves to it."""
        cursor = self._cursor
        if cursor is not None and position.epoch == cursor.epoch and position.seq <= cursor.seq:
            return False
        self._cursor = position
        return True

    def _write(self, frame) -> None:
        """A prepared frame to the peer, unless it was found to be a slow consumer or is closing."""
        if not self._guard.tripped and self.state == self.STATE_OPEN:
            if self._perMessageCompress is None and not self.send_queue:
                self.transport.write(frame.payloadHybi)  # what sendPreparedMessage does, minus its per-frame debug log
            else:
                self.sendPreparedMessage(frame)
            if self._guard.wrote(self.transport, len(frame.payloadHybi)):
                metrics.slow_consumer_closes.labels(metrics.WEBSOCKET).inc()
                log.info("closing a slow consumer on {namespace}", namespace=self.namespace)
                self.close(CLOSE_TRY_AGAIN_LATER, SLOW_CONSUMER)

    def close(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

    def _send(self, envelope: dict) -> None:
        self.sendMessage(wire.dumps(envelope), False)

    # -- client messages --------------------------------------------------------

    def onMessage(self, payload, isBinary):
        if not self._registered:
            return
        RECEIVED.inc()
        if self.factory.namespace.echo:
            self.sendMessage(payload, isBinary)
            return
        settings = self.factory.settings
        if not self._bucket.take():
            if self._bucket.refused_in_a_row >= settings.rate_limit_close_after:
                log.info("closing connection on {namespace}: rate limit", namespace=self.namespace)
                self.close(CLOSE_POLICY, "Rate limit exceeded")
                return
            self._send(wire.error("rate_limited", f"Rate limit exceeded: at most {settings.rate_limit:g} messages per second"))
            return
        try:
            message = wire.parse_client_message(payload)
            handler = self._handlers.get(message["type"])
            if handler is None:
                raise wire.ClientMessageError("unknown_type", f"Unknown message type: {message['type']}")
            handler(self, message)
        except wire.ClientMessageError as e:
            self._send(wire.error(e.code, e.message))
        except Exception:
            log.failure("unexpected error handling a client message on {namespace}", namespace=self.namespace)
            self._send(wire.error("internal_error", "Internal error"))

    def _may_join(self, room: str) -> bool:
        session = self.session
        if session is None or session.role not in self.factory.settings.restricted_roles:
            return True
        return room == self.factory.namespace.default_room or (
            session.kiosk_id is not None and room == session.kiosk_id
        )

    def _join_room(self, message: dict) -> None:
        room = wire.room_of(message)
        settings = self.factory.settings
        if room not in self.rooms:
            if not self._may_join(room):
                raise wire.ClientMessageError("forbidden", "This session may not join that room")
            if len(self.rooms) >= settings.max_rooms:
                raise wire.ClientMessageError(
                    "room_limit", f"Room limit reached: at most {settings.max_rooms} rooms per connection"
                )
            settings.hub.join(self, room)
        self._send(wire.direct("room_joined", {"room": room}))

    def _leave_room(self, message: dict) -> None:
        room = wire.room_of(message)
        self.factory.settings.hub.leave(self, room)
        self._send(wire.direct("room_left", {"room": room}))

    def _ping(self, message: dict) -> None:
        self._send(wire.pong(wire.ping_of(message)))

    def _resume_message(self, message: dict) -> None:
        data = message.get("data")
        data = data if isinstance(data, dict) else {}
        since = data.get("since", message.get("since"))
        epoch = data.get("epoch", message.get("epoch"))
        if not isinstance(since, (str, int)) or isinstance(since, bool):
            raise wire.ClientMessageError("invalid_message", "resume needs data.since, the seq of the last event seen")
        if epoch is not None and not isinstance(epoch, str):
            raise wire.ClientMessageError("invalid_message", "resume's data.epoch must be a string (the epoch of since)")
        if self._held is not None:
            raise wire.ClientMessageError("busy", "A replay or resume is already in progress")
        self._resume(since, epoch)

    _handlers = {"join_room": _join_room, "leave_room": _leave_room, "ping": _ping, "resume": _resume_message}

    def onAutoPong(self, ping_sent, ping_seq, pong_received, pong_rtt, payload):
        metrics.ping_rtt.observe((pong_received - ping_sent) / 1e9)

    # -- end -------------------------------------------------------------------

    def onClose(self, wasClean, code, reason):
        if self._registered:
            self._registered = False
            self.factory.settings.hub.remove(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self._registered:
            self._registered = False
            self.factory.settings.hub.remove(self)
        if self._admitted:
            self._admitted = False
            self.factory.admission.release()
        self._gone_for_good()


class _Call:
    def __init__(self, delayed_call):
        self._delayed_call = delayed_call

    def cancel(self) -> None:
        if self._delayed_call.active():
            self._delayed_call.cancel()


class ExactTimer:
    """Autobahn's timers (auto-ping, ping timeout, handshake timeouts) at the time asked for.
    txaio's batched timer floors every deadline to a whole second, so a ping timeout under
    a second can fire before the peer had any chance to answer, and pings repeat at once."""

    def __init__(self, reactor):
        self._reactor = reactor

    def call_later(self, delay, func, *args, **kwargs):
        return _Call(self._reactor.callLater(delay, func, *args, **kwargs))


class NamespaceFactory(WebSocketServerFactory):
    protocol = LegacyProtocol

    def __init__(self, namespace: Namespace, settings: WebSocketSettings, admission: Admission, options: dict):
        super().__init__(server="eformws")
        self._batched_timer = ExactTimer(self.reactor)
        self.namespace = namespace
        self.settings = settings
        self.admission = admission
        self.setProtocolOptions(**options)


def protocol_options(config) -> dict:
    """Autobahn options from the configuration: limits, pings, close behaviour."""
    size = config.get("websocket", "max_message_bytes")
    return {
        "maxFramePayloadSize": size,
        "maxMessagePayloadSize": size,
        "autoPingInterval": config.get("websocket", "ping_interval"),
        "autoPingTimeout": config.get("websocket", "ping_timeout"),
        "openHandshakeTimeout": config.get("websocket", "open_handshake_timeout"),
        "closeHandshakeTimeout": config.get("websocket", "close_handshake_timeout"),
        "failByDrop": False,
        "allowNullOrigin": True,  # `Origin: null` (sandboxed frames, file: pages): the allow-list decides
        "perMessageCompressionAccept": lambda offers: None,
    }


class NamespaceRoot(Resource):
    """`/ws/<name>`: the namespace's WebSocket resource, or 404 for an unknown name."""

    def __init__(self, hub, settings: WebSocketSettings, options: dict, admission: Admission | None = None):
        super().__init__()
        self._hub = hub
        self._settings = settings
        self._options = options
        self._admission = admission or Admission(settings.max_connections)
        self._resources: dict[str, WebSocketResource] = {}

    def getChild(self, name: bytes, request):
        path = "/ws/" + name.decode("utf-8", "replace")
        namespace = self._hub.namespaces.get(path)
        if namespace is None or request.postpath:
            return notFound("No such namespace", "There is no WebSocket namespace at this path.")
        resource = self._resources.get(path)
        if resource is None:
            factory = NamespaceFactory(namespace, self._settings, self._admission, self._options)
            resource = self._resources[path] = WebSocketResource(factory)
        return resource
