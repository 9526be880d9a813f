"""WAMP over WebSocket on `/wamp`: subprotocol negotiation (`wamp.2.json`, `wamp.2.msgpack`),
the session cookie of the upgrade, frames in and out; each transport is a hub connection."""

from __future__ import annotations

import uuid

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from zope.interface import implementer

from eformws.core import metrics
from eformws.core.compat import use_exact_timers
from eformws.core.slow_consumer import SlowConsumerGuard
from eformws.core.wire import CLOSE_NORMAL, CLOSE_POLICY
from eformws.delivery.hub import IConnection
from eformws.sessions.credentials import cookie_values
from eformws.transports.gateway import GatewayProtocol
from eformws.transports.origins import origin_allowed
from eformws.transports.ratelimit import TokenBucket
from eformws.transports.wamp.codec import BadUri, Undecodable
from eformws.transports.wamp.session import OPENING, RouterSession

log = Logger(namespace="eformws.wamp")
RECEIVED = metrics.messages_received.labels(metrics.WAMP)
# A message costs a token of the rate limit for each 4 KiB it has past the first, before it
# is decoded (then one more for the message): decoding a large frame of tiny containers
# costs CPU whether or not it is then refused.
BYTES_PER_TOKEN = 4096


@implementer(IConnection)
class WampProtocol(GatewayProtocol):
    """One WebSocket connection on `/wamp`. As a hub connection it is in no room: the
    router's broker says when it gets a message, and `send(frame)` writes its EVENTs."""

    def __init__(self):
        super().__init__()
        self.id: str | None = None
        self.session = None  # the eform Session, once authenticated
        self.rooms: set[str] = set()
        self.framing = None
        self.cookies: list[str] = []
        self.wamp: RouterSession | None = None
        self._codec = None
        self._timer = None
        self.sees_sensitive = False
        self._admitted = False

    transport_label = metrics.WAMP

    @property
    def namespace(self) -> str:
        return self.factory.router.path

    @property
    def rate_limit_close_after(self) -> int:
        return self.factory.router.rate_limit_close_after

    # -- handshake --------------------------------------------------------------------------

    def onConnect(self, request):
        router = self.factory.router
        if not origin_allowed(router.allowed_origins, request.origin):
            raise ConnectionDeny(403, "Origin not allowed")
        for offered in request.protocols:
            codec = router.codecs.get(offered)
            if codec is not None:
                break
        else:
            raise ConnectionDeny(400, f"WAMP needs the subprotocol {' or '.join(router.codecs)}")
        if router.admission is not None:
            if not router.admission.admit():
                raise ConnectionDeny(503, "Too many connections")
            self._admitted = True
        self._codec = codec
        self.framing = router.framings[offered]
        headers = request.headers
        self.cookies = cookie_values([headers["cookie"]] if "cookie" in headers else [], router.cookie_names)
        return offered

    def onOpen(self):
        self.id = str(uuid.uuid4())
        router = self.factory.router
        # Room for the largest message it may be sent (a relayed CALL or PUBLISH of up to
        # wamp.max_message_bytes, with the router's details) without being taken for slow.
        self.guard = SlowConsumerGuard(max(router.max_unsent_bytes, 2 * router.max_message_bytes))
        self.bucket = TokenBucket(router.rate_limit, router.rate_burst)
        self.wamp = RouterSession(self.factory.router, self)
        self.await_hello()

    def await_hello(self) -> None:
        """A transport without a session is closed unless one is established (HELLO to
        WELCOME) within the open handshake timeout."""
        timeout = self.factory.router.hello_timeout
        self.stop_timer()
        self._timer = self.factory.reactor.callLater(timeout, self._no_session)

    def _no_session(self) -> None:
        self._timer = None
        if self.wamp is not None and self.wamp.state in OPENING:
            self.close_transport(CLOSE_NORMAL, "No session in time")

    def await_goodbye(self, code: int, reason: str) -> None:
        """After the router's GOODBYE: close anyway if the answer does not come within the
        close handshake timeout."""
        self.stop_timer()
        timeout = self.factory.router.goodbye_timeout
        self._timer = self.factory.reactor.callLater(timeout, self.close_transport, code, reason)

    def stop_timer(self) -> None:
        """Stop the one timer of a transport: for a session to open, or for the answer to
        the router's GOODBYE."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- frames in and out ----------------------------------------------------------------------

    def onMessage(self, payload, isBinary):
        session = self.wamp
        if session is None:
            return
        RECEIVED.inc()
        weight = len(payload) // BYTES_PER_TOKEN  # what reading it costs, paid before it is read
        if weight and not self.bucket.take(cost=weight):
            log.info("closing a wamp session: rate limit (bytes)", connection=self.id)
            self.close_transport(CLOSE_POLICY, "Rate limit exceeded")
            return
        if len(payload) > self.factory.router.max_message_bytes:
            self._oversized(session, payload, isBinary)
            return
        try:
            messages = self._codec.decode(payload, isBinary)
        except Undecodable as e:
            session.violation(str(e), e.summary)
            return
        except BadUri as e:
            session.bad_uri(e.raw, str(e))
            return
        for message in messages:
            session.receive(message)

    def _oversized(self, session, payload, is_binary) -> None:
        """A message over `wamp.max_message_bytes` (and within twice it, which Autobahn
        reads): the request it carries is answered, not done."""
        limit = self.factory.router.max_message_bytes
        try:
            messages = self._codec.decode(payload, is_binary)
        except (Undecodable, BadUri):
            messages = []
        if len(messages) != 1:
            session.violation(f"a message of {len(payload)} bytes, over the limit of {limit}", "message over the size limit")
            return
        session.oversized(messages[0], len(payload), limit)

    def send_message(self, message) -> bool:
        """Encode and send; False when this session's serialization cannot carry the message
        (an integer past 64 bits from a JSON peer, for MessagePack), which is then not sent."""
        try:
            payload = self._codec.encode(message)
        except Exception as e:
            log.info("a {kind} this session's {subprotocol} cannot carry was not sent: {error}",
                     kind=type(message).__name__.upper(), subprotocol=self._codec.subprotocol, error=str(e)[:200],
                     connection=self.id)
            return False
        if self.writable:
            self.sendMessage(payload, self._codec.binary)
        return True

    # -- IConnection -----------------------------------------------------------------------------

    def send(self, frame) -> None:
        """EVENTs of a delivered message (counted against the slow-consumer bound in sendData)."""
        if self.wamp is not None and self.wamp.established and self.state == self.STATE_OPEN and not self.guard.tripped:
            for event in frame.events_for(self):
                self.sendPreparedMessage(event)

    def close(self, code: int, reason: str) -> None:
        """End the session with GOODBYE first when there is one, then the transport."""
        if self.wamp is not None:
            self.wamp.goodbye(code, reason)
        else:
            self.close_transport(code, reason)

    def close_transport(self, code: int, reason: str) -> None:
        self.stop_timer()
        self.close_with(code, reason)

    # -- end -----------------------------------------------------------------------------------

    def onClose(self, wasClean, code, reason):
        self._gone()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._gone()
        if self._admitted:
            self._admitted = False
            self.factory.router.admission.release()
        self._gone_for_good()

    def _gone(self) -> None:
        self.stop_timer()
        if self.wamp is not None:
            self.wamp.transport_lost()


class WampFactory(WebSocketServerFactory):
    protocol = WampProtocol

    def __init__(self, router, options: dict):
        super().__init__(server="eformws")
        use_exact_timers(self)
        self.router = router
        self.setProtocolOptions(**options)
