"""HTTP connections against the clock and in number (issue 13, HTTP slowloris): a request's
head must arrive within `server.request_head_timeout` and its body at
`server.min_body_rate`, else 408 and close; an idle keep-alive connection is closed; HTTP
connections count against `server.max_http_connections` until they close or become
WebSocket connections, and past it a new one gets a bare 503.

Real servers on port 0 with small budgets; the clients are raw sockets (asyncio streams on
the test's event loop), which wait for the server by reading to EOF with a bounded timeout.
The only pauses are a client's own pace (a slowloris' bytes, the gaps between keep-alive
requests) and, for the WebSocket, the time past the deadline that is what is tested. One
more test drives the same deadlines with an injected clock, exact to the tick."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_twisted
import treq
from conftest import aio

HEAD_TIMEOUT = 0.5
LIMITS = {"server.request_head_timeout": HEAD_TIMEOUT, "server.min_body_rate": 1000}
SLACK = 1.5  # seconds a close may come after its deadline on a busy test machine


def split(response: bytes) -> tuple[str, dict, bytes]:
    """(status line, headers with lower-case names, body) of one HTTP response."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


class Raw:
    """A raw TCP connection to the server."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, server) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def trickle(self, data: bytes, every: float) -> None:
        """Send `data` one byte per `every` seconds (a slowloris), until sent or refused."""
        try:
            for i in range(len(data)):
                await self.send(data[i:i + 1])
                await asyncio.sleep(every)
        except (ConnectionError, OSError):
            pass

    async def read_to_end(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(-1), timeout)

    async def read_response(self, timeout: float = 5.0) -> tuple[str, dict, bytes]:
        """One response (Content-Length or chunked), leaving the connection open."""
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self) -> tuple[str, dict, bytes]:
        status, headers, _ = split(await self.reader.readuntil(b"\r\n\r\n"))
        if "content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers["content-length"]))
        assert headers.get("transfer-encoding") == "chunked", headers
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            body += (await self.reader.readexactly(size + 2))[:size]
            if size == 0:
                return status, headers, body

    def close(self) -> None:
        self.writer.close()


def assert_408(response: bytes) -> None:
    status, headers, body = split(response)
    assert status == "HTTP/1.1 408 Request Timeout", response
    assert headers["content-type"] == "application/json" and headers["connection"] == "close", headers
    answer = json.loads(body)
    assert list(answer) == ["statusCode", "error", "message"]
    assert (answer["statusCode"], answer["error"]) == (408, "Request Timeout"), answer


async def slow_head(server, every: float = 0.1) -> tuple[bytes, float]:
    """A request head sent one byte per `every` seconds; (what came back, seconds to EOF)."""
    client = await Raw.open(server)
    sending = asyncio.ensure_future(client.trickle(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000, every))
    try:
        response = await client.read_to_end()
        return response, time.monotonic() - client.opened
    finally:
        sending.cancel()
        client.close()


async def slow_body(server, framing: bytes, body: bytes, every: float) -> tuple[bytes, float]:
    """A broadcast whose head comes at once (with `framing`: its length or chunking) and
    whose body one byte per `every` seconds; (what came back, seconds to EOF)."""
    client = await Raw.open(server)
    await client.send(b"POST /api/websocket/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                      b"Content-Type: application/json\r\n" + framing + b"\r\n\r\n")
    sending = asyncio.ensure_future(client.trickle(body, every))
    try:
        return await client.read_to_end(), time.monotonic() - client.opened
    finally:
        sending.cancel()
        client.close()


# -- deadlines ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_head_sent_byte_by_byte_is_answered_408_and_closed_at_the_head_timeout(start_server):
    server = await start_server(LIMITS)
    response, elapsed = await aio(slow_head(server))
    assert_408(response)
    assert HEAD_TIMEOUT <= elapsed < HEAD_TIMEOUT + SLACK, elapsed


@pytest_twisted.ensureDeferred
async def test_a_body_sent_below_the_minimum_rate_is_answered_408_at_its_deadline(start_server):
    server = await start_server({**LIMITS, "auth.api_tokens": ["tok"]})

    response, elapsed = await aio(slow_body(server, b"Content-Length: 500", b"{" + b" " * 499, 0.05))  # 20 bytes/s
    assert_408(response)
    deadline = HEAD_TIMEOUT + 500 / 1000  # the head's time, then 500 bytes at 1000 bytes/s
    assert deadline <= elapsed < deadline + SLACK, elapsed


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_gets_the_time_of_max_body_bytes(start_server):
    server = await start_server({**LIMITS, "server.max_body_bytes": 300, "auth.api_tokens": ["tok"]})

    response, elapsed = await aio(slow_body(server, b"Transfer-Encoding: chunked", b"1\r\n \r\n" * 100, 0.02))
    assert_408(response)
    deadline = HEAD_TIMEOUT + 300 / 1000
    assert deadline <= elapsed < deadline + SLACK, elapsed


@pytest_twisted.ensureDeferred
async def test_a_body_at_a_normal_pace_is_answered(start_server):
    server = await start_server({**LIMITS, "auth.api_tokens": ["tok"]})

    async def scenario():
        client = await Raw.open(server)
        body = json.dumps({"namespace": "/ws/lockers", "event": "e", "data": {}}).encode()
        await client.send(b"POST /api/websocket/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        await client.send(body)
        try:
            return await client.read_response()
        finally:
            client.close()

    status, _, body = await aio(scenario())
    assert status == "HTTP/1.1 200 OK", body
    assert json.loads(body)["success"] is True


@pytest_twisted.ensureDeferred
async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(start_server):
    server = await start_server(LIMITS)

    async def scenario():
        client = await Raw.open(server)
        try:
            return await client.read_to_end(), time.monotonic() - client.opened
        finally:
            client.close()

    response, elapsed = await aio(scenario())
    assert response == b""
    assert HEAD_TIMEOUT <= elapsed < HEAD_TIMEOUT + SLACK, elapsed


@pytest_twisted.ensureDeferred
async def test_an_idle_keep_alive_connection_is_closed_at_the_head_timeout_after_its_response(start_server):
    server = await start_server(LIMITS)

    async def scenario():
        client = await Raw.open(server)
        try:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await client.read_response()
            answered = time.monotonic()
            rest = await client.read_to_end()
            return status, headers, rest, time.monotonic() - answered
        finally:
            client.close()

    status, headers, rest, idle = await aio(scenario())
    assert status == "HTTP/1.1 200 OK" and "connection" not in headers  # kept alive
    assert rest == b""  # closed with no answer: there was no request
    assert HEAD_TIMEOUT * 0.8 <= idle < HEAD_TIMEOUT + SLACK, idle


@pytest_twisted.ensureDeferred
async def test_each_request_on_a_keep_alive_connection_gets_its_own_head_timeout(start_server):
    server = await start_server(LIMITS)

    async def scenario():
        client = await Raw.open(server)
        statuses = []
        try:
            for _ in range(4):  # 4 x 0.3 s on one connection: longer than one head timeout
                await asyncio.sleep(HEAD_TIMEOUT * 0.6)
                await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                statuses.append((await client.read_response())[0])
            return statuses, time.monotonic() - client.opened
        finally:
            client.close()

    statuses, elapsed = await aio(scenario())
    assert statuses == ["HTTP/1.1 200 OK"] * 4
    assert elapsed > HEAD_TIMEOUT * 2


@pytest_twisted.ensureDeferred
async def test_a_websocket_connection_stays_open_past_the_head_timeout(start_server):
    server = await start_server(LIMITS)
    client = await server.join("/ws/lockers", await server.session())
    await aio(asyncio.sleep(HEAD_TIMEOUT * 4))  # time passing is what is tested
    await client.send({"type": "ping", "data": {"timestamp": "still here"}})
    pong = await client.recv()
    assert (pong["type"], pong["data"]["timestamp"]) == ("pong", "still here")
    await client.close()


# -- the number of HTTP connections -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_past_max_http_connections_a_connection_gets_503_until_the_slow_ones_are_gone(start_server):
    server = await start_server({**LIMITS, "server.max_http_connections": 3})

    async def scenario():
        slow = [await Raw.open(server) for _ in range(3)]
        for client in slow:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        extra = await Raw.open(server)
        refused = await extra.read_to_end()
        extra.close()
        timed_out = [await client.read_to_end() for client in slow]  # the head timeout frees them
        for client in slow:
            client.close()
        return refused, timed_out

    refused, timed_out = await aio(scenario())
    status, headers, body = split(refused)
    assert status == "HTTP/1.1 503 Service Unavailable", refused
    assert headers["connection"] == "close"
    assert json.loads(body) == {"statusCode": 503, "error": "Service Unavailable",
                                "message": "Too many HTTP connections; try again"}
    for response in timed_out:
        assert_408(response)
    response = await treq.get(server.http("/healthz"), persistent=False)
    assert response.code == 200
    await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_a_refused_client_that_sent_its_request_reads_the_503(start_server):
    server = await start_server({**LIMITS, "server.max_http_connections": 1})

    async def scenario():
        holder = await Raw.open(server)
        await holder.send(b"GET")
        extra = await Raw.open(server)
        await extra.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + b"X" * 10_000)
        try:
            return await extra.read_to_end()
        finally:
            extra.close()
            holder.close()

    refused = await aio(scenario())
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused


@pytest_twisted.ensureDeferred
async def test_a_websocket_connection_does_not_hold_an_http_connection_slot(start_server):
    server = await start_server({**LIMITS, "server.max_http_connections": 1})
    clients = [await server.join("/ws/lockers", await server.session()) for _ in range(3)]
    response = await treq.get(server.http("/healthz"), persistent=False)
    assert response.code == 200
    await treq.content(response)
    for client in clients:
        await client.close()


# -- the same deadlines on an injected clock (exact, whatever the machine's load) ------------


def test_a_body_deadline_is_the_head_timeout_plus_its_length_over_the_rate_to_the_tick():
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure
    from twisted.web.resource import Resource

    from eformws.http.site import build_site

    clock = Clock()
    site = build_site(Resource(), Resource(), 1000, head_timeout=10.0, min_body_rate=100, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    assert site.http_connections == 1
    clock.advance(2.0)
    channel.dataReceived(b"POST /api/websocket/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
    clock.advance(12.99)  # 10 s for the head + 500 bytes at 100 bytes/s: 15 s from the opening
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(0.01)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    assert site.http_connections == 0
    assert clock.getDelayedCalls() == []  # no timer left behind


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_past_max_body_bytes_is_answered_413_at_once(start_server):
    server = await start_server({"server.request_head_timeout": 30.0, "server.max_body_bytes": 300,
                                 "auth.api_tokens": ["tok"]})

    async def scenario():
        client = await Raw.open(server)
        await client.send(b"POST /api/websocket/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\n \r\n" * 400)
        try:
            return await client.read_to_end(), time.monotonic() - client.opened
        finally:
            client.close()

    response, elapsed = await aio(scenario())
    status, headers, body = split(response)
    assert (status, json.loads(body)["message"]) == ("HTTP/1.1 413 Payload Too Large", "body must be at most 300 bytes")
    assert elapsed < 5.0  # not at the body's deadline (30 s and more)


@pytest_twisted.ensureDeferred
async def test_a_declared_body_past_max_body_bytes_is_answered_413_before_it_is_sent(start_server):
    server = await start_server({"server.request_head_timeout": 30.0, "server.max_body_bytes": 300})

    async def scenario():
        client = await Raw.open(server)
        await client.send(b"POST /api/websocket/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        try:
            return await client.read_to_end()
        finally:
            client.close()

    status, _, _ = split(await aio(scenario()))
    assert status == "HTTP/1.1 413 Payload Too Large"


@pytest.mark.slow  # ~3 s: waits for the write buffer to fill
@pytest_twisted.ensureDeferred
async def test_pipelined_requests_whose_answers_are_not_read_are_dropped(start_server):
    import socket

    server = await start_server({})

    async def scenario():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        reader._transport.pause_reading()
        writer.write(b"GET /console/console.js HTTP/1.1\r\nHost: x\r\n\r\n" * 400)  # about 8 MB of answers
        await writer.drain()
        await asyncio.sleep(3)  # the client's own pace: it reads nothing for a while
        reader._transport.resume_reading()
        received = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                received += chunk
        except (ConnectionError, OSError):
            pass
        writer.close()
        return received.count(b"HTTP/1.1 200 OK")

    assert await aio(scenario()) < 400


@pytest_twisted.ensureDeferred
async def test_an_upgraded_connection_keeps_neither_its_http_channel_nor_its_upgrade_request(server):
    import gc

    from eformws.http.site import DeadlineChannel

    session_id = await server.session()
    clients = [await server.join("/ws/lockers", session_id) for _ in range(3)]
    gc.collect()
    upgraded = [o for o in gc.get_objects()
                if isinstance(o, DeadlineChannel) and o.site is server.service.site and o.transport is None]
    assert upgraded == []  # each held its upgrade request, about 5 KiB a connection
    for client in clients:
        await client.close()
