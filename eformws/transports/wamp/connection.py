"""What a WAMP transport does whatever carries it (WebSocket on `/wamp`, RawSocket on a port of
its own): the hub connection, its RouterSession and timers, messages weighed, decoded and sent."""

from __future__ import annotations


from twisted.logger import Logger

from eformws.core import ids, metrics
from eformws.core.slow_consumer import SlowConsumerGuard
from eformws.core.wire import CLOSE_NORMAL, CLOSE_POLICY
from eformws.transports.ratelimit import TokenBucket
from eformws.transports.wamp.codec import BadUri, Undecodable
from eformws.transports.wamp.session import OPENING, RouterSession

log = Logger(namespace="eformws.wamp")
RECEIVED = metrics.messages_received.labels(metrics.WAMP)
# A message costs a token of the rate limit for each 4 KiB it has past the first, before it
# is decoded (then one more for the message): decoding a large frame of tiny containers
# costs CPU whether or not it is then refused.
BYTES_PER_TOKEN = 4096


class WampConnection:
    """One transport's WAMP side. As a hub connection (`IConnection`, which each transport
    class declares) it is in no room: the router's broker says when it gets a message, and
    `send(frame)` writes its EVENTs. A transport mixes it in before its protocol class; its
    factory has `router` and `reactor`, and it provides
    `writable`, `write_message(payload)`, `write_event(prepared)`, `prepare_event(payload,
    binary)` (how an EVENT is framed once for every session of its kind), `close_with(code,
    reason)`, `abort()` and `closed`."""

    transport_type: str  # what the meta API says of it: "websocket", "rawsocket"
    transport_label = metrics.WAMP  # the `transport` label of its metrics
    max_send: int | None = None  # the largest message the peer takes (RawSocket's handshake says); None: any

    def __init__(self):
        super().__init__()
        self.id: str | None = None
        self.session = None  # the eform Session, once authenticated
        self.rooms: set[str] = set()
        self.framing = None
        self.cookies: list[str] = []
        self.wamp: RouterSession | None = None
        self.sees_sensitive = False
        self._codec = None
        self._timer = None
        self._admitted = False

    @property
    def namespace(self) -> str:
        return self.factory.router.path

    @property
    def rate_limit_close_after(self) -> int:
        return self.factory.router.rate_limit_close_after

    # -- opening ------------------------------------------------------------------------------

    def admit(self) -> bool:
        """Count this transport against `server.max_connections` (with the legacy namespaces'
        and every other WAMP transport); False when that is full."""
        admission = self.factory.router.admission
        if admission is not None:
            if not admission.admit():
                return False
            self._admitted = True
        return True

    def start_session(self, codec) -> None:
        """The transport is open and speaks `codec`: its budgets, and a RouterSession waiting
        for HELLO within the open handshake timeout (counted from the transport's opening
        when it started earlier)."""
        router = self.factory.router
        self.id = self.id or ids.uuid4()
        self._codec = codec
        self.framing = router.framings[codec.subprotocol]
        # Room for the largest message it may be sent (a relayed CALL or PUBLISH of up to
        # wamp.max_message_bytes, with the router's details) without being taken for slow.
        self.guard = SlowConsumerGuard(max(router.max_unsent_bytes, 2 * router.max_message_bytes))
        self.bucket = TokenBucket(router.rate_limit, router.rate_burst)
        self.wamp = RouterSession(router, self)
        if self._timer is None:
            self.await_hello()

    def await_hello(self) -> None:
        """A transport without a session is closed unless one is established (HELLO to
        WELCOME) within the open handshake timeout."""
        timeout = self.factory.router.hello_timeout
        self.stop_timer()
        self._timer = self.factory.reactor.callLater(timeout, self._no_session)

    def _no_session(self) -> None:
        self._timer = None
        if self.wamp is None or self.wamp.state in OPENING:
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

    # -- messages in and out ----------------------------------------------------------------------

    def received(self, payload: bytes, is_binary: bool) -> None:
        """One whole message from the peer: paid for by size, answered when over
        `wamp.max_message_bytes`, else decoded and given to the session."""
        session = self.wamp
        if session is None:
            return
        RECEIVED.inc()
        weight = len(payload) // BYTES_PER_TOKEN  # what reading it costs, paid before it is read
        if weight and not self.bucket.take(cost=weight):
            log.info("closing a wamp session: rate limit (bytes)", connection=self.id, transport=self.transport_type)
            self.close_transport(CLOSE_POLICY, "Rate limit exceeded")
            return
        if len(payload) > self.factory.router.max_message_bytes:
            self._oversized(session, payload, is_binary)
            return
        try:
            messages = self._codec.decode(payload, is_binary)
        except Undecodable as e:
            session.violation(str(e), e.summary)
            return
        except BadUri as e:
            session.bad_uri(e.raw, str(e))
            return
        for message in messages:
            session.receive(message)

    def _oversized(self, session, payload, is_binary) -> None:
        """A message over `wamp.max_message_bytes` (and within twice it, which is read): the
        request it carries is answered, not done."""
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
        (an integer past 64 bits from a JSON peer, for MessagePack) or it is over what the
        peer takes (`max_send`), which is then not sent."""
        try:
            payload = self._codec.encode(message)
        except Exception as e:
            log.info("a {kind} this session's {subprotocol} cannot carry was not sent: {error}",
                     kind=type(message).__name__.upper(), subprotocol=self._codec.subprotocol, error=str(e)[:200],
                     connection=self.id)
            return False
        if self.max_send is not None and len(payload) > self.max_send:
            log.info("a {kind} of {size} bytes, over the {limit} the peer takes, was not sent",
                     kind=type(message).__name__.upper(), size=len(payload), limit=self.max_send, connection=self.id)
            return False
        if self.writable:
            self.write_message(payload)
        return True

    # -- IConnection -----------------------------------------------------------------------------

    def send(self, frame) -> None:
        """EVENTs of a delivered message (counted against the slow-consumer bound)."""
        if self.wamp is not None and self.wamp.established and self.writable:
            for event in frame.events_for(self):
                self.write_event(event)

    def close(self, code: int, reason: str) -> None:
        """End the session with GOODBYE first when there is one, then the transport."""
        if self.wamp is not None:
            self.wamp.goodbye(code, reason)
        else:
            self.close_transport(code, reason)

    def close_transport(self, code: int, reason: str) -> None:
        self.stop_timer()
        self.close_with(code, reason)

    # -- end -------------------------------------------------------------------------------------

    def _gone(self) -> None:
        """The transport closed: the session ends (the hub forgets it)."""
        self.stop_timer()
        if self.wamp is not None:
            self.wamp.transport_lost()

    def _release(self) -> None:
        """Give back the place `admit` took (once)."""
        if self._admitted:
            self._admitted = False
            self.factory.router.admission.release()
