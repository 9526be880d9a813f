"""Each private part of Twisted and Autobahn that eformws/core/compat.py uses, pinned: these fail
when a release of either library renames or changes it, before the slow-consumer guard,
the exact timers or an orderly exit weaken without a word."""

from __future__ import annotations

import inspect

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.application import app
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from eformws.core.compat import (
    Frame,
    drop_pipelined_requests,
    forget_exit_signal,
    frame_bytes,
    has_pipelined_requests,
    server_frame,
    twisted_write_buffer,
    use_exact_timers,
    write_now,
    writes_frames_directly,
)

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def test_a_frame_is_the_bytes_autobahn_sends_and_keeps_its_position():
    frame = Frame(b"hello", False, position=("epoch", 7))
    assert isinstance(frame, PreparedMessage)
    assert frame_bytes(frame) == b"\x81\x05hello"  # FIN + text, unmasked, length 5
    assert frame.position == ("epoch", 7)
    assert frame_bytes(Frame(b"\x00", True))[:2] == b"\x82\x01"  # binary


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_a_server_frame_is_byte_for_byte_what_autobahn_writes_for_the_message(size, binary):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert server_frame(payload, binary) == frame_bytes(PreparedMessage(payload, binary, False, True))


@pytest_twisted.ensureDeferred
async def test_a_connection_without_compression_writes_prepared_frames_directly(server):
    client = await server.join("/ws/lockers", await server.session())
    connection, = server.hub.namespaces["/ws/lockers"].connections.values()
    assert isinstance(connection, WebSocketServerProtocol)
    assert writes_frames_directly(connection) is True
    connection.send_queue.append(("queued",))  # what Autobahn queues while it is sending
    assert writes_frames_directly(connection) is False
    connection.send_queue.clear()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_carries_no_copy_of_its_factorys_protocol_options(server):
    client = await server.join("/ws/lockers", await server.session())
    connection, = server.hub.namespaces["/ws/lockers"].connections.values()
    assert set(WebSocketServerProtocol.CONFIG_ATTRS) & set(vars(connection)) == set()
    assert connection.autoPingInterval == connection.factory.autoPingInterval  # read from its class
    assert connection.perMessageCompressionAccept([]) is None  # a function option stays a function
    await client.close()


def test_autobahns_option_dump_is_formatted_only_when_it_is_written():
    from pprint import pformat

    from autobahn.websocket import protocol as autobahn_protocol

    from eformws.core.compat import defer_autobahn_option_dump

    assert "pformat(configAttrLog)" in inspect.getsource(autobahn_protocol.WebSocketProtocol._connectionMade)
    defer_autobahn_option_dump()
    dump = autobahn_protocol.pformat([("autoPingInterval", 25, "Factory")])
    assert f"{dump}" == str(dump) == pformat([("autoPingInterval", 25, "Factory")])


class _Transport(StringTransport):
    def unregisterProducer(self):
        pass  # Autobahn unregisters whether or not it registered; a socket's transport allows it


def test_exact_timers_fire_autobahns_timeouts_at_the_time_asked():
    clock = Clock()
    factory = WebSocketServerFactory(reactor=clock)
    factory.protocol = WebSocketServerProtocol
    assert hasattr(factory, "_batched_timer")  # what use_exact_timers replaces
    factory.setProtocolOptions(openHandshakeTimeout=0.25)
    use_exact_timers(factory)
    transport = _Transport()
    factory.buildProtocol(PEER).makeConnection(transport)
    clock.advance(0.24)
    assert not transport.disconnecting
    clock.advance(0.02)  # txaio's batched timer would wait for a whole second
    assert transport.disconnecting


class _Silent(protocol.Protocol):
    pass


@pytest_twisted.ensureDeferred
async def test_twisted_write_buffer_counts_what_a_tcp_transport_has_not_sent_yet_through_wrappers():
    accepted = defer.Deferred()

    class Accept(protocol.Factory):
        def buildProtocol(self, addr):
            built = _Silent()
            reactor.callLater(0, accepted.callback, built)
            return built

    port = reactor.listenTCP(0, WrappingFactory(Accept()), interface="127.0.0.1")  # TLS is such a wrapper too
    client = await protocol.ClientCreator(reactor, _Silent).connectTCP("127.0.0.1", port.getHost().port)
    server_side = await accepted
    try:
        assert twisted_write_buffer(server_side.transport) == 0
        server_side.transport.write(b"x" * 100_000)
        assert twisted_write_buffer(server_side.transport) == 100_000  # not sent before the reactor runs
    finally:
        client.transport.abortConnection()
        server_side.transport.abortConnection()
        await port.stopListening()


class _Pending(Resource):
    isLeaf = True

    def render_GET(self, request):
        return NOT_DONE_YET


def test_requests_pipelined_behind_an_unanswered_one_are_seen_and_can_be_dropped():
    site = Site(_Pending())
    channel = HTTPChannel()  # what eformws.http.site's channel is (the Site wraps one for HTTP/2 negotiation)
    channel.site, channel.requestFactory = site, site.requestFactory
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert has_pipelined_requests(channel)
    drop_pipelined_requests(channel)
    assert not has_pipelined_requests(channel)


def test_the_exit_signal_twistd_re_raises_is_the_reactors_and_can_be_forgotten():
    assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner)  # what twistd exits with
    clock_reactor = type("R", (), {"_exitSignal": 15})()
    forget_exit_signal(clock_reactor)
    assert clock_reactor._exitSignal is None
    assert hasattr(reactor, "_exitSignal")


async def accepted_tcp_pair():
    """A Twisted TCP server transport and the plain socket at the other end (which reads
    only when the test reads): (server transport, client socket, listening port)."""
    import socket

    made = defer.Deferred()

    class Accepting(protocol.Protocol):
        def connectionMade(self):
            made.callback(self.transport)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Accepting), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    transport = await made
    return transport, client, port


def read_all(client, size: int) -> bytes:
    import select

    got = b""
    while len(got) < size:
        select.select([client], [], [], 5)
        got += client.recv(1 << 20)
    return got


@pytest_twisted.ensureDeferred
async def test_write_now_sends_at_once_when_twisted_holds_nothing_for_the_socket():
    transport, client, port = await accepted_tcp_pair()
    try:
        write_now(transport, b"frame")
        assert twisted_write_buffer(transport) == 0 and not transport._tempDataBuffer
        assert read_all(client, 5) == b"frame"  # sent before the reactor turned again
    finally:
        client.close()
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_waits_in_twisteds_buffer_and_later_writes_keep_their_order():
    import socket

    transport, client, port = await accepted_tcp_pair()
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 16_384  # 4 MiB: more than the kernel takes at once
        write_now(transport, big)
        assert twisted_write_buffer(transport) > 0  # the rest waits in Twisted's buffer
        write_now(transport, b"after")  # not sent past what waits
        assert twisted_write_buffer(transport) > 0
        got = b""
        while len(got) < len(big) + 5:  # the reactor writes what waits as the peer reads
            await deferLater(reactor, 0.001, lambda: None)
            try:
                got += client.recv(1 << 20)
            except BlockingIOError:
                pass
        assert got == big + b"after"
    finally:
        client.close()
        port.stopListening()


def test_write_now_hands_any_other_transport_to_its_write():
    transport = StringTransport()
    write_now(transport, b"frame")
    assert transport.value() == b"frame"
