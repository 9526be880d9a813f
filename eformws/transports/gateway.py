"""What every WebSocket connection of the gateway shares, legacy namespaces and WAMP alike:
admission against `server.max_connections`, Autobahn's options, `GatewayProtocol`, `closed`."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from eformws.core import metrics
from eformws.core.compat import usable_offers
from eformws.core.slow_consumer import SLOW_CONSUMER, SlowConsumerGuard
from eformws.core.wire import CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER
from eformws.transports.deflate import accept_deflate, decline
from eformws.transports.ratelimit import TokenBucket

log = Logger(namespace="eformws.websocket")


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
        # Only a pong answers a ping: a peer that sends but does not read is still closed.
        "autoPingRestartOnAnyTraffic": False,
        "allowNullOrigin": True,  # `Origin: null` (sandboxed frames, file: pages): the allow-list decides
        "perMessageCompressionAccept": accept_deflate if config.get("websocket", "compression") else decline,
    }



class ClosedSignal:
    """`closed` of a hub connection, whatever carries it (WebSocket, RawSocket): a Deferred
    for each waiter, fired by `_gone_for_good` once the connection is gone."""

    _closed_waiters: list[Deferred] | None = None  # made on first use
    _is_gone = False

    @property
    def closed(self):
        """A new Deferred that fires once the connection is gone and out of the hub.
        (Autobahn's `is_closed` fires before `onClose`, while the hub still has it.)"""
        if self._is_gone:
            return succeed(self)
        d = Deferred()
        if self._closed_waiters is None:
            self._closed_waiters = []
        self._closed_waiters.append(d)
        return d

    def _gone_for_good(self) -> None:
        """Fire `closed`: call last in connectionLost, once out of every registry."""
        self._is_gone = True
        waiters, self._closed_waiters = self._closed_waiters or [], None
        for d in waiters:
            d.callback(self)


class GatewayProtocol(ClosedSignal, WebSocketServerProtocol):
    """What every WebSocket connection of the gateway shares (legacy namespaces and WAMP):
    handshake refusals without the query string, closing with any code, `closed`, and the
    budgets: every byte written to the peer counts against the slow-consumer bound, every
    frame the peer sends (pings included) against the inbound rate limit."""

    transport_label = metrics.WEBSOCKET  # the `transport` label of this kind's metrics

    def __init__(self):
        super().__init__()
        self.guard: SlowConsumerGuard | None = None  # set when the connection opens
        self.bucket: TokenBucket | None = None  # set when the connection opens
        self._closing_slow = False

    def _parseExtensionsHeader(self, header, removeQuotes=True):
        """A client's extension offers; a compression offer that cannot be parsed is left out
        (declined), not a reason to refuse the handshake (`compat.usable_offers`)."""
        return usable_offers(super()._parseExtensionsHeader(header, removeQuotes))

    # -- budgets ------------------------------------------------------------------------

    def sendData(self, data, sync=False, chopsize=None):
        """Every write of Autobahn's (messages, replies, pongs, close frames) passes here: a
        slow consumer is sent nothing more but its close frame."""
        guard = self.guard
        if guard is None:
            return super().sendData(data, sync, chopsize)
        if guard.tripped and not self._closing_slow:
            return None
        super().sendData(data, sync, chopsize)
        self.wrote(len(data))
        return None

    def wrote(self, size: int) -> None:
        """Count `size` bytes written to the peer; past the bound, close 1013 (once)."""
        if self.guard.wrote(self.transport, size):
            self.slow_consumer()

    def slow_consumer(self) -> None:
        """Send nothing more but a close 1013; Autobahn drops the connection (and what
        waits for it) if the close is not answered within the close handshake timeout."""
        self.guard.tripped = True
        metrics.slow_consumer_closes.labels(self.transport_label).inc()
        log.info("closing a slow consumer on {namespace}", namespace=self.namespace)
        self._closing_slow = True
        try:
            self.close_with(CLOSE_TRY_AGAIN_LATER, SLOW_CONSUMER)
        finally:
            self._closing_slow = False

    @property
    def writable(self) -> bool:
        """Open, and not found to be a slow consumer: it may be sent more."""
        return self.state == self.STATE_OPEN and self.guard is not None and not self.guard.tripped

    def onPing(self, payload):
        """A ping from the peer costs a token like any message; over the limit it gets no
        pong, and past `rate_limit_close_after` refusals in a row the connection closes."""
        if self._free_frame():
            return super().onPing(payload)
        return None

    def onFrameBegin(self):
        """A pong, and each continuation frame of a message (its first frame is paid for
        with the message), cost a token too: no frame is free to flood with."""
        opcode = self.current_frame.opcode
        if opcode in (0, 10):
            self._free_frame()
        return super().onFrameBegin()

    def _free_frame(self) -> bool:
        """Take a token for a frame the peer sent; False when over the limit (and past
        `rate_limit_close_after` refusals in a row, the connection is closed 1008)."""
        bucket = self.bucket
        if bucket is None or not self.frames_rate_limited or bucket.take():
            return True
        if bucket.refused_in_a_row >= self.rate_limit_close_after and self.state == self.STATE_OPEN:
            log.info("closing connection on {namespace}: rate limit (frames)", namespace=self.namespace)
            self.close_with(CLOSE_POLICY, "Rate limit exceeded")
        return False

    frames_rate_limited = True  # False for a test echo namespace (the Autobahn Testsuite's)

    @property
    def rate_limit_close_after(self) -> int:
        raise NotImplementedError

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
