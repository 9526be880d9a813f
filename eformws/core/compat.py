"""What eformws takes from the private parts of Twisted and Autobahn, in one place; each is
pinned by tests/test_compat.py, which fails loudly when a release of either changes it."""

from __future__ import annotations

import struct
import types

from pprint import pformat

from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp

# -- Autobahn --------------------------------------------------------------------------------


class Frame(PreparedMessage):
    """A WebSocket frame serialized once for every recipient (Autobahn's PreparedMessage)
    that also carries the event-log position of the event it holds (None for others)."""

    def __init__(self, payload: bytes, binary: bool, position=None):
        super().__init__(payload, binary, False, True)  # not masked, never compressed
        self.position = position


def deflated_frame(payload: bytes, deflated: bytes, binary: bool, position=None) -> Frame:
    """A Frame whose wire bytes carry `deflated` (the message's permessage-deflate data, RFC
    7692 7.2.1: its trailing 00 00 FF FF removed) with RSV1 set; `payload` stays what it
    was. Autobahn writes a PreparedMessage marked doNotCompress as its wire bytes, as we do."""
    frame = Frame(payload, binary, position)
    frame.payloadHybi = server_frame(deflated, binary, rsv1=True)
    return frame


def frame_bytes(frame: PreparedMessage) -> bytes:
    """The whole frame as it goes on the wire (header and payload)."""
    return frame.payloadHybi


def server_frame(payload: bytes, binary: bool, rsv1: bool = False) -> bytes:
    """One whole unmasked WebSocket frame (RFC 6455 5.2), as a server sends it: what
    Autobahn's sendMessage writes for a message it does not fragment (`rsv1`: the payload
    is compressed, RFC 7692)."""
    opcode = (0x82 if binary else 0x81) | (0x40 if rsv1 else 0)
    size = len(payload)
    if size < 126:
        return bytes((opcode, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", opcode, 126, size) + payload
    return struct.pack("!BBQ", opcode, 127, size) + payload


def writes_frames_directly(protocol) -> bool:
    """Whether a Frame (a PreparedMessage marked doNotCompress, its bytes final: plain, or
    deflated by the connection's framing) may be written to the protocol's transport as it
    is: nothing queued in Autobahn's send queue (`sendPreparedMessage` writes such a frame
    as it is too, after what is queued)."""
    return not protocol.send_queue


def usable_offers(extensions: list) -> list:
    """The (extension, params) pairs Autobahn parsed from a client's Sec-WebSocket-Extensions,
    less the permessage-deflate offers its offer parser refuses (an unknown parameter,
    `server_max_window_bits=8`, a repeated one): RFC 7692 has the server decline such an
    offer and consider the next, where Autobahn would fail the whole handshake with 400."""
    usable = []
    for extension, params in extensions:
        found = PERMESSAGE_COMPRESSION_EXTENSION.get(extension)
        if found is not None:
            try:
                found["Offer"].parse(params)
            except Exception:
                continue
        usable.append((extension, params))
    return usable


def forget_inflater(protocol) -> None:
    """Drop the permessage-deflate decompressor Autobahn keeps after a client's message
    (about 40 KiB a connection) when the client agreed to no context takeover: Autobahn
    makes a new one for each message anyway."""
    deflate = protocol._perMessageCompress
    if deflate is not None and deflate.client_no_context_takeover:
        deflate._decompressor = None


def server_window_bits(protocol) -> int | None:
    """The server-to-client window size (bits) permessage-deflate negotiated, or None."""
    deflate = protocol._perMessageCompress
    return None if deflate is None else deflate.server_max_window_bits


def protocol_with_options(factory) -> None:
    """Autobahn copies each of its ~45 protocol options from the factory onto every protocol
    instance as it connects (`WebSocketProtocol._connectionMade`, unless the instance has
    the attribute already): give the factory a subclass of its protocol that holds them as
    class attributes, so no connection carries a copy. Call after `setProtocolOptions`."""
    base = factory.protocol
    options = {name: _as_class_attribute(getattr(factory, name)) for name in base.CONFIG_ATTRS}
    factory.protocol = type(base.__name__, (base,), {"__module__": base.__module__, **options})


def _as_class_attribute(value):
    """A function an option holds stays a plain function when read from an instance."""
    return staticmethod(value) if isinstance(value, types.FunctionType) else value


class _Deferred:
    """`pformat(value)`, done only if the text is asked for (a debug line being written)."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def __format__(self, spec) -> str:
        return format(pformat(self._value), spec)

    __str__ = __repr__ = lambda self: pformat(self._value)


def defer_autobahn_option_dump() -> None:
    """`WebSocketProtocol._connectionMade` formats every option with `pformat` for a debug
    line on each connection, logged or not (14 % of a connect's CPU): have it format only
    when the line is written."""
    autobahn_protocol.pformat = _Deferred


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


def use_exact_timers(factory) -> None:
    """Give an Autobahn factory (and so its protocols) the exact timer instead of txaio's
    batched one."""
    factory._batched_timer = ExactTimer(factory.reactor)


# -- Twisted ---------------------------------------------------------------------------------


def twisted_write_buffer(transport) -> int:
    """Bytes written to a Twisted TCP transport (or a wrapper of one: TLS, the policies
    wrappers delegate attributes) that are still in Twisted's own buffer. AttributeError
    for a transport that has none (a test's StringTransport)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def write_now(transport, data: bytes) -> None:
    """Write `data` to a TCP transport: when Twisted holds nothing for it, straight to the
    socket with one `send()`, and only what the kernel did not take (a partial write,
    EAGAIN) to Twisted's buffer, so order and back-pressure stay Twisted's. Twisted's own
    `write` would register the socket for writing (`epoll_ctl`) and send on the next
    reactor turn, then unregister it: two system calls more per frame, the most of what a
    fan-out costs after `send()`. Any other transport (TLS, a wrapper, a test's) or a
    socket error: `write()`, which handles it as Twisted does."""
    if (type(transport) is not tcp.Server or not transport.connected or transport.disconnecting
            or transport._tempDataLen or len(transport.dataBuffer) != transport.offset):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # Twisted meets the error on its next write and closes as it does
        return
    if sent < len(data):
        transport.write(data[sent:])


def drop_pipelined_requests(channel) -> None:
    """Forget the requests an HTTP/1.1 channel has received but not started (pipelined
    behind the one being answered)."""
    channel._dataBuffer = []


def has_pipelined_requests(channel) -> bool:
    """Whether an HTTP/1.1 channel holds received bytes of requests not started yet."""
    return any(channel._dataBuffer)


def forget_exit_signal(reactor) -> None:
    """twistd re-raises the SIGTERM/SIGINT that stopped the reactor once it has stopped, so
    the process would end "killed by signal"; forgetting the signal makes it exit 0."""
    reactor._exitSignal = None
