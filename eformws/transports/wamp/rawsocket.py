"""WAMP over RawSocket (TCP, `wamp.rawsocket_port`): the opening handshake and its error replies,
4-byte frame headers, PING/PONG and the write budget; the WAMP side is `WampConnection`'s."""

from __future__ import annotations

import math
import socket

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from eformws.core import ids, metrics
from eformws.core.wire import CLOSE_POLICY
from eformws.delivery.hub import IConnection
from eformws.transports.gateway import ClosedSignal
from eformws.transports.wamp.connection import BYTES_PER_TOKEN, WampConnection

log = Logger(namespace="eformws.wamp")

MAGIC = 0x7F
HEADER = 4  # octets of the handshake, and of each frame's header
DATA, PING, PONG = 0, 1, 2  # frame types (the low 3 bits of a header's first octet)
MAX_LENGTH = (1 << 24) - 1  # a frame's length is 3 octets
# The least a client may take: 2 ** (9 + 1) octets. At 512 it could not be sent WELCOME (about
# 600 to 750 octets with the router's roles and a long authid).
MIN_PEER_EXPONENT = 1
# Handshake error codes (the upper nibble of the reply's second octet, serializer 0).
SERIALIZER_UNSUPPORTED = 1
LENGTH_UNACCEPTABLE = 2
RESERVED_BITS = 3
CONNECTION_LIMIT = 4


def length_exponent(size: int) -> int:
    """The handshake's length exponent (0-15: 2**(9 + e) octets) of the smallest power of two
    that holds `size` octets, at most 2**24."""
    return min(15, max(0, (size - 1).bit_length() - 9))


def frame_header(kind: int, length: int) -> bytes:
    return bytes((kind,)) + length.to_bytes(3, "big")


def data_frame(payload: bytes, binary: bool = True) -> bytes:
    """A message as one RawSocket frame (header and payload); RawSocket has no text frames."""
    return frame_header(DATA, len(payload)) + payload


@implementer(IConnection)
class RawSocketProtocol(WampConnection, ClosedSignal, Protocol):
    """One TCP connection on the RawSocket port. The router never sends PING (Autobahn|Python
    clients cannot take one); it answers the peer's, and TCP keepalive finds dead peers."""

    transport_type = "rawsocket"
    prepare_event = staticmethod(data_frame)

    def __init__(self):
        super().__init__()
        self.guard = None  # set when the handshake is done
        self.bucket = None
        self._buffer = bytearray()
        self._open = False  # the handshake is done and the transport not closing
        self._ending = False  # closing or closed: nothing more is read or written
        self._drop = None  # the timer that drops a transport whose close does not end

    # -- opening ------------------------------------------------------------------------------

    def connectionMade(self):
        self.id = ids.uuid4()
        if not self.admit():  # told at once (a client reads the reply after its handshake) and closed
            self._refuse(CONNECTION_LIMIT, "maximum connection count reached (server.max_connections)")
            return
        keep_alive(self.transport, self.factory.router.ping_interval, self.factory.router.ping_timeout)
        self.await_hello()  # the handshake and HELLO to WELCOME, within the open handshake timeout

    def _handshake(self, octets: bytes) -> bool:
        """Answer the client's 4 octets: with the router's (its length exponent, the serializer
        it asked for) and a session waiting for HELLO; else an error reply and close."""
        magic, second, *reserved = octets
        if magic != MAGIC:  # no RawSocket client: the spec has no reply for it
            return self._refuse(None, "first octet is not 0x7F")
        if any(reserved):
            return self._refuse(RESERVED_BITS, "reserved octets are not zero")
        codec = self.factory.codecs.get(second & 0x0F)
        if codec is None:
            return self._refuse(SERIALIZER_UNSUPPORTED, f"serializer {second & 0x0F} unsupported")
        if second >> 4 < MIN_PEER_EXPONENT:
            return self._refuse(LENGTH_UNACCEPTABLE, "the client takes messages of at most 512 bytes (WELCOME is more)")
        self.max_send = 2 ** (9 + (second >> 4))
        self.transport.write(bytes((MAGIC, self.factory.exponent << 4 | codec.rawsocket_id, 0, 0)))
        self.start_session(codec)
        self._open = True
        return True

    def _refuse(self, code: int | None, reason: str) -> bool:
        log.info("wamp rawsocket handshake refused: {reason}", reason=reason, error_code=code, connection=self.id)
        if code is not None:
            self.transport.write(bytes((MAGIC, code << 4, 0, 0)))
        self._end()
        return False

    # -- frames in ----------------------------------------------------------------------------

    def dataReceived(self, data):
        if self._ending:
            return
        self._buffer += data
        if not self._open:
            if len(self._buffer) < HEADER or not self._handshake(bytes(self._buffer[:HEADER])):
                return
            del self._buffer[:HEADER]
        self._frames()

    def _frames(self) -> None:
        """Each whole frame in the buffer, in order; a frame over twice `wamp.max_message_bytes`
        is not read (the transport is closed when its header comes)."""
        buffer = self._buffer
        while len(buffer) >= HEADER and not self._ending:
            first, length = buffer[0], int.from_bytes(buffer[1:HEADER], "big")
            kind = first & 0x07
            if first & 0xF8 or kind > PONG:
                self._broken(f"a frame header with reserved bits set or an unknown type ({first:#04x})")
                return
            if length > self.factory.readable:
                self._broken(f"a frame of {length} bytes, over twice wamp.max_message_bytes", length=length)
                return
            if len(buffer) < HEADER + length:
                return
            with memoryview(buffer) as view:
                payload = bytes(view[HEADER:HEADER + length])
            del buffer[:HEADER + length]
            if kind == DATA:
                self.received(payload, self._codec.binary)
            elif self._frame_paid(length):  # PING answered with its payload; a PONG answers nothing of ours
                if kind == PING and length <= self.max_send:
                    self._write(frame_header(PONG, length), payload)
                elif kind == PING:
                    log.debug("a PING over the {limit} bytes the peer takes was not answered", limit=self.max_send,
                              connection=self.id)

    def _frame_paid(self, length: int) -> bool:
        """A PING or PONG costs what a message of its size does (a token, and one per 4 KiB
        past the first, which it cannot pay closes the transport); over the limit it is not
        answered, and past `wamp.rate_limit_close_after` refusals in a row the transport is
        closed."""
        weight = length // BYTES_PER_TOKEN
        if weight and not self.bucket.take(cost=weight):
            log.info("closing a wamp session: rate limit (bytes)", connection=self.id, transport=self.transport_type)
            self.close_transport(CLOSE_POLICY, "Rate limit exceeded")
            return False
        if self.bucket.take():
            return True
        if self.bucket.refused_in_a_row >= self.rate_limit_close_after:
            log.info("closing a wamp session: rate limit (pings)", connection=self.id, transport=self.transport_type)
            self.close_transport(CLOSE_POLICY, "Rate limit exceeded")
        return False

    def _broken(self, reason: str, **fields) -> None:
        """Framing that cannot be followed: closed, nothing more read (no ABORT: where the
        next message starts is unknown)."""
        log.info("closing a wamp rawsocket connection: {reason}", reason=reason, connection=self.id, **fields)
        self._end()

    # -- frames out -----------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._open and not self._ending and not self.guard.tripped

    def write_message(self, payload: bytes) -> None:
        self._write(frame_header(DATA, len(payload)), payload)

    def write_event(self, frame: bytes) -> None:
        if len(frame) - HEADER > self.max_send:
            log.debug("an EVENT over the {limit} bytes the peer takes was not sent", limit=self.max_send,
                      connection=self.id)
            return
        self._write(frame)

    def _write(self, *parts: bytes) -> None:
        """Write, counting against the slow-consumer bound: past it the transport is dropped
        (RawSocket has no close to send first)."""
        if not self.writable:
            return
        self.transport.writeSequence(parts)
        if self.guard.wrote(self.transport, sum(len(part) for part in parts)):
            self.guard.tripped = True
            metrics.slow_consumer_closes.labels(self.transport_label).inc()
            log.info("dropping a slow consumer on the wamp rawsocket port", connection=self.id)
            self.abort()

    # -- closing ----------------------------------------------------------------------------------

    def close_with(self, code: int, reason: str) -> None:
        """RawSocket has no close code or reason (the GOODBYE or ABORT before it says why):
        the transport is closed once what was written has gone, or dropped after the close
        handshake timeout."""
        self._end()

    def _end(self) -> None:
        if self._ending:
            return
        self._ending = True
        self._buffer.clear()
        self.transport.loseConnection()
        self._drop = self.factory.reactor.callLater(self.factory.router.goodbye_timeout, self.abort)

    def abort(self) -> None:
        self._ending = True
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._drop is not None and self._drop.active():
            self._drop.cancel()
        self._ending = True
        self._gone()
        self._release()
        self._gone_for_good()


def keep_alive(transport, interval: float, timeout: float) -> None:
    """TCP keepalive on an accepted socket, probing as often as /wamp pings: a peer that
    vanished (host down, network gone) is dropped within about `interval` + 2 × `timeout`,
    and data it leaves unacknowledged for `interval` + `timeout` ends the connection.
    (RawSocket has its own PING, but stock Autobahn|Python clients cannot take one.) A
    peer whose host still answers TCP but whose process is stuck is found only once
    unsent data passes the slow-consumer bound."""
    try:
        transport.setTcpKeepAlive(True)
        handle = transport.getHandle()
        if interval <= 0 or not hasattr(socket, "TCP_KEEPIDLE"):
            return
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, math.ceil(interval)))
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, math.ceil(timeout)))
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int((interval + timeout) * 1000))
    except (AttributeError, OSError):
        pass  # not a TCP socket (TLS wraps one: its handle; a test's transport has none)


class RawSocketFactory(Factory):
    """The RawSocket port's protocols, for one router: its serializations by RawSocket number,
    the length it asks clients to keep to (`wamp.max_message_bytes`, rounded up to a power of
    two) and the length it reads (twice that limit, as on `/wamp`)."""

    protocol = RawSocketProtocol
    noisy = False

    def __init__(self, router, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.router = router
        self.reactor = reactor
        self.codecs = {codec.rawsocket_id: codec for codec in router.codecs.values()}
        self.exponent = length_exponent(router.max_message_bytes)
        self.readable = min(2 * router.max_message_bytes, MAX_LENGTH)
