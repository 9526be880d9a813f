"""WAMP over RawSocket for tests: stock Autobahn|Python sessions (`WampRawSocketClientFactory`,
Twisted) on a test server's RawSocket port, and a raw client that sends and reads its bytes."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from autobahn.twisted.rawsocket import WampRawSocketClientFactory
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from conftest import aio, within
from wamp_peer import SERIALIZERS, new_peer

MAGIC = 0x7F
JSON, MSGPACK, CBOR = 1, 2, 3  # serializer numbers of the handshake
DATA, PING, PONG = 0, 1, 2


def open_rawsocket_peer(server, serializer="json", tls=None, **auth):
    """Connect a stock Peer (`wamp_peer.new_peer(**auth)`) to the server's RawSocket port;
    over TLS with `tls` (Twisted's client TLS options)."""
    from twisted.internet import reactor

    peer = new_peer(**auth)
    factory = WampRawSocketClientFactory(lambda: peer, serializer=SERIALIZERS[serializer]())
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.service.rawsocket_port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    endpoint.connect(factory)
    return peer


async def join_rawsocket(server, serializer="json", role="admin", kiosk=None, user="alice"):
    """A joined RawSocket Peer (ticket auth) of a new session with `role`."""
    sid = await server.session(user=user, role=role, kiosk=kiosk)
    peer = open_rawsocket_peer(server, serializer, ticket=sid)
    await within(peer.joined)
    return peer


opened: list = []  # raw clients of the running test, closed when it ends (see `close_raw_rawsockets`)


class RawClient:
    """A TCP connection to the RawSocket port that writes and reads bytes as they are (asyncio
    streams); Deferred-returning, like conftest's Client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    def connect(cls, server, receive_buffer: int | None = None):
        """Connect; with `receive_buffer` the socket's is that small (for a client that will
        stop reading: the server's buffers, not this one's, fill up)."""
        async def connect():
            sock = socket.socket()
            if receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.service.rawsocket_port))
            client = cls(*await asyncio.open_connection(sock=sock, limit=receive_buffer or 2 ** 16))
            opened.append(client)
            return client
        return aio(connect())

    def stall(self) -> None:
        """Read nothing more."""
        self.reader._transport.pause_reading()

    def write(self, data: bytes):
        async def write():
            self.writer.write(data)
            await self.writer.drain()
        return aio(write())

    def read(self, size: int, timeout: float = 5.0):
        """Exactly `size` bytes; b"" when the server closed first."""
        async def read():
            try:
                return await asyncio.wait_for(self.reader.readexactly(size), timeout)
            except asyncio.IncompleteReadError:
                return b""
        return aio(read())

    async def handshake(self, serializer: int = JSON, exponent: int = 15) -> bytes:
        """Send the client's handshake; the server's 4 octets (b"" when it just closed)."""
        await self.write(bytes((MAGIC, exponent << 4 | serializer, 0, 0)))
        return await self.read(4)

    def send_frame(self, payload: bytes, kind: int = DATA):
        return self.write(bytes((kind,)) + len(payload).to_bytes(3, "big") + payload)

    def send(self, message):
        """A WAMP message as a JSON data frame."""
        return self.send_frame(json.dumps(message).encode("utf-8"))

    async def recv_frame(self) -> tuple[int, bytes] | None:
        """(type, payload) of the next frame; None when the server closed."""
        header = await self.read(4)
        if not header:
            return None
        return header[0], await self.read(int.from_bytes(header[1:], "big"))

    async def recv(self):
        """The next data frame as JSON (None when the server closed)."""
        frame = await self.recv_frame()
        if frame is None:
            return None
        kind, payload = frame
        assert kind == DATA, frame
        return json.loads(payload)

    def closed(self, timeout: float = 5.0):
        """Fires with what the server sent before closing (read to the end of the stream)."""
        return aio(asyncio.wait_for(self.reader.read(), timeout))

    def close(self):
        self.writer.close()


@pytest.fixture(autouse=True)
def close_raw_rawsockets(start_server):
    """Raw clients do not answer the router's GOODBYE at shutdown: close them first."""
    yield
    while opened:
        opened.pop().close()
