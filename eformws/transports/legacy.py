"""The legacy JSON WebSocket protocol (docs/protocol.md sections 2-5): handshake checks and
session auth, client-message dispatch and limits; one Autobahn factory per namespace."""

from __future__ import annotations

from dataclasses import dataclass

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from zope.interface import implementer

from eformws.core import ids, metrics, wire
from eformws.core.compat import (
    Frame,
    defer_autobahn_option_dump,
    forget_inflater,
    frame_bytes,
    protocol_with_options,
    server_window_bits,
    use_exact_timers,
    write_now,
    writes_frames_directly,
)
from eformws.core.policy import Policy
from eformws.core.slow_consumer import SlowConsumerGuard
from eformws.core.wire import CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER
from eformws.delivery.catchup import PacedWriter
from eformws.delivery.feed import LOG_INTERRUPTED
from eformws.delivery.hub import IConnection, IFraming, Namespace
from eformws.delivery.replay import EventFrames, RecentEvents
from eformws.events.store import EventFilter, Position, Resumption, parse_cursor
from eformws.sessions import first_valid_session
from eformws.sessions.credentials import candidates
from eformws.transports.deflate import deflate_framing
from eformws.transports.gateway import Admission, GatewayProtocol
from eformws.transports.origins import origin_allowed
from eformws.transports.ratelimit import TokenBucket

log = Logger(namespace="eformws.websocket")

RECEIVED = metrics.messages_received.labels(metrics.WEBSOCKET)

EVENT_LOG_UNAVAILABLE = "Event log unavailable"
FIRST_BATCH = 16  # events a catch-up asks the log for first (at most 16 × 64 KiB held)


@implementer(IFraming)
class JsonFraming:
    """Legacy clients get the envelope itself as one unmasked, uncompressed text frame."""

    def prepare(self, message):
        return Frame(message.payload, False, message.position)  # structured events have a position

    def frame(self, payload: bytes, binary: bool = False, position=None) -> Frame:
        return Frame(payload, binary, position)


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
    event_store: object
    replay_window: float
    replay_limit: int
    catch_up_batch: int
    max_unsent_bytes: int
    policy: Policy
    replay: RecentEvents
    catch_up: PacedWriter

    @classmethod
    def from_config(cls, config, policy, hub, sessions, event_store):
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
            event_store=event_store,
            replay_window=config.get("events", "replay_window"),
            replay_limit=config.get("events", "replay_limit"),
            catch_up_batch=config.get("events", "catch_up_batch"),
            max_unsent_bytes=config.get("websocket", "max_unsent_bytes"),
            policy=policy,
            replay=RecentEvents(event_store, hub, config.get("events", "replay_window"), config.get("events", "replay_limit")),
            catch_up=PacedWriter(EventFrames(hub.redactor), config.get("websocket", "max_unsent_bytes"), reactor),
        )


def handshake_candidates(request, cookie_names) -> list[str]:
    headers = request.headers
    return candidates(
        [headers["cookie"]] if "cookie" in headers else [],
        [headers["authorization"]] if "authorization" in headers else [],
        request.params.get("sessionId", []),
        cookie_names,
    )


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
        self._since = None  # (seq, epoch) of ?since= and &epoch=
        self._wants_replay = True  # ?replay=false: none
        self._held: list | None = None  # frames held back while replaying or resuming
        self._held_bytes = 0
        self._cursor: Position | None = None  # the newest structured event this client has (sent or resumed past)
        self.sees_sensitive = False

    @property
    def namespace(self) -> str:
        return self.factory.namespace.path

    @property
    def rate_limit_close_after(self) -> int:
        return self.factory.settings.rate_limit_close_after

    @property
    def frames_rate_limited(self) -> bool:
        return not self.factory.namespace.echo

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
            elif not self.factory.settings.policy.may_use(session, namespace):
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
        self.id = ids.uuid4()
        window_bits = server_window_bits(self)
        if window_bits is not None:  # permessage-deflate negotiated (websocket.compression)
            self.framing = deflate_framing(window_bits)
        self.bucket = TokenBucket(settings.rate_limit, settings.rate_burst)
        self.guard = SlowConsumerGuard(settings.max_unsent_bytes)
        self.sees_sensitive = settings.policy.sees_sensitive(self.session)
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

    def _catch_up(self, run, finish) -> None:
        """Hold live frames back while `run` writes stored events at the pace the client
        reads them (what it writes ends where live delivery began), then send every held
        frame, then whatever `finish` sends with what `run` fired with."""
        self._held, self._held_bytes = [], 0
        d = run()
        d.addCallback(self._caught_up, finish)
        d.addErrback(self._catch_up_failed, finish)

    def _caught_up(self, outcome, finish) -> None:
        held, self._held = self._held or [], None
        if outcome is None or not self.writable:
            # The client left, or is being closed (a slow consumer, the log lost what it
            # was being sent): nothing may be sent any more.
            return
        for frame in held:
            self.send(frame)
        if finish is not None:
            finish(*outcome)

    def _catch_up_failed(self, failure, finish) -> None:
        """A replay that fails is left out (nothing is claimed); a resume that fails is not
        answered `recovered:false` (nothing is known to be lost): the client is closed 1013
        to resume again in a moment."""
        log.warn("event store query failed for a connection on {namespace}: {error}",
                 namespace=self.namespace, error=failure.getErrorMessage())
        if finish is None:
            self._caught_up((), None)
            return
        self._held = None
        self.close(CLOSE_TRY_AGAIN_LATER, EVENT_LOG_UNAVAILABLE)

    def _replay(self) -> None:
        settings = self.factory.settings
        metrics.replays.inc()

        @inlineCallbacks
        def run():
            events = yield metrics.timed(settings.replay.recent(self._filter()), "event_store", "recent")
            written = yield settings.catch_up.write(self, events)
            return None if written is None else ()

        self._catch_up(run, None)

    def _resume(self, cursor, epoch=None) -> None:
        """Resume from `cursor` (of `epoch`): the events after it up to where this client's
        live delivery began, asked of the store `events.catch_up_batch` at a time, each
        batch once the client has read most of the last; when the log no longer has them
        all, the replay a new connection gets, and `resumed` says recovered false."""
        settings = self.factory.settings
        store, writer = settings.event_store, settings.catch_up
        start = settings.hub.position  # everything after it reaches this client live (held meanwhile)
        event_filter = self._filter()

        def since(after, of_epoch, batch):
            return metrics.timed(store.since(after, of_epoch, event_filter, batch, start), "event_store", "since")

        @inlineCallbacks
        def run():
            # A first batch small enough whatever the events' size, then about
            # `websocket.max_unsent_bytes` of them at a time (at most catch_up_batch).
            found = yield since(cursor, epoch, min(FIRST_BATCH, settings.catch_up_batch))
            if not found.recovered:
                replayed = []
                if settings.replay_limit:
                    # Up to where this catch-up started: what came after is held, sent after it.
                    replayed = yield metrics.timed(settings.replay.recent(event_filter, start), "event_store", "recent")
                written = yield writer.write(self, replayed)
                return None if written is None else (found, written[0])
            after, current = parse_cursor(cursor), self._cursor
            if current is not None and after is not None and after > current.seq:
                self._cursor = Position(found.latest.epoch, after)  # the client has up to there
            count = 0
            while True:
                written = yield writer.write(self, found.events)
                if written is None:
                    return None
                count += written[0]
                if not found.more:
                    return found, count
                batch = writer.batch_after(*written, settings.catch_up_batch)
                found = yield since(found.events[-1]["seq"], found.latest.epoch, batch)
                if not found.recovered:
                    # The log lost events this client was still to get while it read the
                    # earlier ones: it resumes from what it has, and is told.
                    if self.writable:
                        self.close(CLOSE_TRY_AGAIN_LATER, LOG_INTERRUPTED)
                    return None

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

        self._catch_up(run, resumed)

    # -- IConnection -----------------------------------------------------------

    def send(self, frame) -> None:
        """A frame delivered live (held while catching up: held bytes count against the
        slow-consumer bound like unsent ones)."""
        if self._held is not None:
            if self.writable:
                self._held.append(frame)
                self._held_bytes += len(frame_bytes(frame))
                if self._held_bytes > self.guard.limit:
                    self._held.clear()
                    self.slow_consumer()
        elif frame.position is None or self._new_to_client(frame.position):
            self.write_frame(frame)

    def _new_to_client(self, position) -> bool:
        """Whether a structured event is past what this client has (it may have resumed past
        it); the cursor then moves to it."""
        cursor = self._cursor
        if cursor is not None and position.epoch == cursor.epoch and position.seq <= cursor.seq:
            return False
        self._cursor = position
        return True

    def write_frame(self, frame) -> None:
        """A prepared frame to the peer, unless it was found to be a slow consumer or is closing."""
        if self.writable:
            if writes_frames_directly(self):
                payload = frame_bytes(frame)
                write_now(self.transport, payload)  # what sendPreparedMessage does, minus its per-frame debug log
                self.wrote(len(payload))
            else:
                self.sendPreparedMessage(frame)  # counted in sendData

    def close(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

    def _send(self, envelope: dict) -> None:
        """A message of the connection's own (a reply, a notice), unless it may be sent nothing."""
        if self.writable:
            self.write_frame(self.framing.frame(wire.dumps(envelope)))

    # -- client messages --------------------------------------------------------

    def onMessage(self, payload, isBinary):
        forget_inflater(self)
        if not self._registered or not self.writable:
            return  # refused at the handshake, closing, or a slow consumer: nothing is answered
        RECEIVED.inc()
        if self.factory.namespace.echo:
            self.write_frame(self.framing.frame(payload, isBinary))
            return
        settings = self.factory.settings
        if not self.bucket.take():
            if self.bucket.refused_in_a_row >= settings.rate_limit_close_after:
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

    def _join_room(self, message: dict) -> None:
        room = wire.room_of(message)
        settings = self.factory.settings
        if room not in self.rooms:
            if not settings.policy.may_join(self.session, self.factory.namespace, room):
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


class NamespaceFactory(WebSocketServerFactory):
    protocol = LegacyProtocol

    def __init__(self, namespace: Namespace, settings: WebSocketSettings, admission: Admission, options: dict):
        super().__init__(server="eformws")
        use_exact_timers(self)
        self.namespace = namespace
        self.settings = settings
        self.admission = admission
        self.setProtocolOptions(**options)
        protocol_with_options(self)
        defer_autobahn_option_dump()


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
