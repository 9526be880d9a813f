"""WAMP over RawSocket (docs/wamp.md, "RawSocket"): stock Autobahn|Python sessions on the port
`wamp.rawsocket_port` opens, with the sessions, auth and limits of /wamp; the handshake, its
error replies and the framing at the byte level."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from autobahn.exception import PayloadExceededError
from autobahn.wamp.types import PublishOptions
from conftest import within
from js_peers import Lines
from logcheck import LogCapture, logged_problems  # noqa: F401  (autouse: no error in the log)
from rawsocket_peer import (  # noqa: F401  (close_raw_rawsockets: autouse)
    CBOR,
    DATA,
    JSON,
    MAGIC,
    MSGPACK,
    PING,
    PONG,
    RawClient,
    close_raw_rawsockets,
    join_rawsocket,
    open_rawsocket_peer,
)
from twisted.internet import reactor
from wamp_frames import (
    ABORT,
    AUTHENTICATE,
    CALL,
    CHALLENGE,
    ERROR,
    EVENT,
    HELLO,
    RESULT,
    ROLES,
    SUBSCRIBE,
    SUBSCRIBED,
    WELCOME,
)
from wamp_peer import call_error, join, subscribe

from eformws.core import metrics

RAWSOCKET = {"wamp.rawsocket_port": 0}
ACKNOWLEDGED = PublishOptions(acknowledge=True)
SLOW_CLOSES = metrics.slow_consumer_closes.labels(metrics.WAMP)._value


@pytest_twisted.async_fixture
async def server(start_server):
    return await start_server(RAWSOCKET)


async def leave(*peers) -> None:
    for peer in peers:
        peer.leave()
        await within(peer.gone)


def wamp_sessions(server) -> dict:
    return server.hub.endpoints["/wamp"].connections


# -- stock clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
@pytest_twisted.ensureDeferred
async def test_a_stock_rawsocket_session_joins_by_ticket_and_is_a_rawsocket_wamp_session(server, serializer):
    peer = await join_rawsocket(server, serializer, role="admin", user="ada")
    details = await peer.joined
    assert (details.authid, details.authrole, details.authmethod, details.authprovider) == (
        "ada", "admin", "ticket", "eformws")
    described = await within(peer.call("wamp.session.get", details.session))
    assert described["transport"] == {"type": "rawsocket"}
    status = await within(peer.call("eform.status"))
    assert status["endpoints"] == {"/wamp": 1}  # counted with /wamp's sessions
    await leave(peer)
    assert wamp_sessions(server) == {}


@pytest.mark.parametrize(("rawsocket_serializer", "websocket_serializer"), [("cbor", "json"), ("json", "msgpack")])
@pytest_twisted.ensureDeferred
async def test_rawsocket_and_websocket_sessions_publish_subscribe_register_and_call_each_other(
        server, rawsocket_serializer, websocket_serializer):
    raw = await join_rawsocket(server, rawsocket_serializer, role="staff", user="ray")
    web = await join(server, websocket_serializer, role="admin", user="wes")
    raw_inbox, _ = await subscribe(raw, "app.orders.created")
    web_inbox, _ = await subscribe(web, "app.", match="prefix")
    await within(raw.register(lambda a, b: [a + b, "ray"], "app.raw.add"))
    await within(web.register(lambda text: text.upper(), "app.web.upper"))

    await within(web.publish("app.orders.created", 1, [2.5], {"x": None}, total=3, options=ACKNOWLEDGED))
    args, kwargs, _ = await raw_inbox.next_publication()
    assert (args, kwargs) == ((1, [2.5], {"x": None}), {"total": 3})
    await within(raw.publish("app.orders.shipped", "box", options=ACKNOWLEDGED))
    args, _, details = await web_inbox.next_publication()
    assert (args, details.topic, details.publisher_authid) == (("box",), "app.orders.shipped", "ray")

    assert await within(web.call("app.raw.add", 2, 3)) == [5, "ray"]
    assert await within(raw.call("app.web.upper", "shout")) == "SHOUT"
    assert (await call_error(raw.call("app.nobody"))).error == "wamp.error.no_such_procedure"
    await leave(raw, web)


@pytest_twisted.ensureDeferred
async def test_an_emitted_event_reaches_a_rawsocket_subscriber_as_it_reaches_a_websocket_one(server):
    raw = await join_rawsocket(server, "msgpack", role="admin")
    web = await join(server, "msgpack", role="admin")
    raw_inbox, _ = await subscribe(raw, "eform.lockers", match="prefix")
    web_inbox, _ = await subscribe(web, "eform.lockers", match="prefix")
    stored = await server.service.events.emit("locker_state_changed", {
        "lockerId": "kiosk-1:12", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"})
    (raw_envelope, raw_details), (web_envelope, web_details) = await raw_inbox.next(), await web_inbox.next()
    assert raw_envelope == web_envelope and raw_envelope["id"] == stored["id"]
    assert raw_details.topic == web_details.topic == "eform.lockers.locker_updates"
    await leave(raw, web)


@pytest_twisted.ensureDeferred
async def test_a_wrong_ticket_over_rawsocket_is_aborted_not_authorized(server):
    peer = open_rawsocket_peer(server, "cbor", ticket="not-a-session")
    details = await within(peer.left)
    assert (details.reason, details.message) == ("wamp.error.not_authorized", "Authentication failed")
    await within(peer.gone)
    assert wamp_sessions(server) == {}


@pytest_twisted.ensureDeferred
async def test_a_call_over_wamp_max_message_bytes_is_answered_payload_size_exceeded_and_the_session_goes_on(
        start_server):
    # 1,500 bytes: the handshake asks for at most 2,048 (a power of two), so a stock client
    # sends a CALL of about 1,700 and the router answers it, as on /wamp.
    server = await start_server({**RAWSOCKET, "wamp.max_message_bytes": 1500})
    peer = await join_rawsocket(server, "json", role="admin")
    with pytest.raises(PayloadExceededError):
        await within(peer.call("eform.status", "x" * 1700))
    assert (await within(peer.call("eform.status")))["endpoints"] == {"/wamp": 1}
    await leave(peer)


@pytest_twisted.ensureDeferred
async def test_with_the_servers_tls_the_rawsocket_port_is_served_over_tls(start_server, tmp_path):
    from certificates import self_signed
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    cert_path, key_path = self_signed(tmp_path)
    server = await start_server({**RAWSOCKET, "server.tls_certificate": str(cert_path),
                                 "server.tls_private_key": str(key_path)})
    trusted = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_path.read_bytes()))
    peer = open_rawsocket_peer(server, "cbor", tls=trusted, ticket=await server.session(role="admin"))
    details = await within(peer.joined)
    assert (await within(peer.call("wamp.session.get", details.session)))["transport"] == {"type": "rawsocket"}
    await leave(peer)


@pytest_twisted.ensureDeferred
async def test_shutdown_says_goodbye_to_a_rawsocket_session(start_server):
    server = await start_server(RAWSOCKET)
    peer = await join_rawsocket(server, "json")
    await within(server.service.stopService())
    details = await within(peer.left)
    assert (details.reason, details.message) == ("wamp.close.system_shutdown", "Server shutdown")


@pytest_twisted.ensureDeferred
async def test_a_stock_asyncio_client_is_refused_an_unsupported_serializer_and_joins_with_cbor(server):
    ticket = await server.session(role="staff")
    child = Lines()
    script = str(Path(__file__).parent / "asyncio_rawsocket.py")
    reactor.spawnProcess(child, sys.executable, [sys.executable, script, str(server.service.rawsocket_port), ticket],
                         env=dict(os.environ))
    seen = json.loads(await within(child.lines.get(), 20))
    assert seen["flatbuffers"] == "refused: serializer unsupported", child.stderr
    assert seen["cbor"] == {"authrole": "staff", "transport": "rawsocket"}, child.stderr
    assert await within(child.ended, 10) == 0, child.stderr


# -- bytes ------------------------------------------------------------------------------------


async def raw_join(server, serializer=JSON, exponent=15) -> RawClient:
    """A raw client past the handshake, HELLO, CHALLENGE, AUTHENTICATE and WELCOME (JSON)."""
    client = await RawClient.connect(server)
    assert await client.handshake(serializer, exponent) == bytes((MAGIC, 11 << 4 | serializer, 0, 0))
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert await client.recv() == [CHALLENGE, "ticket", {}]
    await client.send([AUTHENTICATE, await server.session(role="admin"), {}])
    assert (await client.recv())[0] == WELCOME
    return client


@pytest.mark.parametrize("serializer", [JSON, MSGPACK, CBOR])
@pytest_twisted.ensureDeferred
async def test_the_handshake_is_answered_with_the_serializer_and_the_length_wamp_max_message_bytes_rounds_to(
        server, serializer):
    client = await RawClient.connect(server)
    # 1 MiB (the default) is 2 ** (9 + 11)
    assert await client.handshake(serializer, 3) == bytes((MAGIC, 11 << 4 | serializer, 0, 0))


@pytest.mark.parametrize(("handshake", "reply", "logged"), [
    (bytes((MAGIC, 0xF0 | 4, 0, 0)), bytes((MAGIC, 1 << 4, 0, 0)), "serializer 4 unsupported"),
    (bytes((MAGIC, 0xF0 | 0, 0, 0)), bytes((MAGIC, 1 << 4, 0, 0)), "serializer 0 unsupported"),
    (bytes((MAGIC, 0xF1, 0, 1)), bytes((MAGIC, 3 << 4, 0, 0)), "reserved octets are not zero"),
    (bytes((MAGIC, 0x01, 0, 0)), bytes((MAGIC, 2 << 4, 0, 0)), "takes messages of at most 512 bytes"),
    (b"GET / HTTP/1.1\r\n\r\n", b"", "first octet is not 0x7F"),
], ids=["unknown_serializer", "serializer_0", "reserved_octets", "length_512", "no_rawsocket_client"])
@pytest_twisted.ensureDeferred
async def test_a_bad_handshake_gets_the_error_reply_the_spec_gives_and_is_closed(server, handshake, reply, logged):
    client = await RawClient.connect(server)
    with LogCapture() as capture:
        await client.write(handshake)
        assert await client.closed() == reply  # the reply, then the end of the stream
    assert any(logged in text and "handshake refused" in text for text in capture.texts()), capture.texts()


@pytest_twisted.ensureDeferred
async def test_past_server_max_connections_the_handshake_is_answered_connection_limit(start_server):
    server = await start_server({**RAWSOCKET, "server.max_connections": 1})
    first = await raw_join(server)
    second = await RawClient.connect(server)
    await second.write(bytes((MAGIC, 0xF1, 0, 0)))
    assert await second.closed() == bytes((MAGIC, 4 << 4, 0, 0))
    first.close()


@pytest_twisted.ensureDeferred
async def test_a_ping_is_answered_with_a_pong_of_its_payload(server):
    client = await raw_join(server)
    await client.send_frame(b"are you there", PING)
    assert await client.recv_frame() == (PONG, b"are you there")
    await client.send([CALL, 1, {}, "eform.status"])  # still in step
    assert (await client.recv())[:2] == [RESULT, 1]


@pytest.mark.parametrize(("frame", "logged"), [
    (bytes((0x08, 0, 0, 2)) + b"[]", "reserved bits set or an unknown type (0x08)"),
    (bytes((0x03, 0, 0, 0)), "reserved bits set or an unknown type (0x03)"),
    (bytes((DATA, 0x20, 0, 1)), "a frame of 2097153 bytes, over twice wamp.max_message_bytes"),
], ids=["reserved_bits", "unknown_type", "over_twice_the_limit"])
@pytest_twisted.ensureDeferred
async def test_framing_that_cannot_be_followed_closes_the_connection_with_a_log_line(server, frame, logged):
    client = await raw_join(server)
    with LogCapture() as capture:
        await client.write(frame)
        assert await client.closed() == b""
    assert any(logged in text for text in capture.texts()), capture.texts()
    assert wamp_sessions(server) == {}


@pytest_twisted.ensureDeferred
async def test_a_message_that_is_no_wamp_is_aborted_as_a_protocol_violation(server):
    client = await raw_join(server)
    await client.send_frame(b"{not json")
    aborted = await client.recv()
    assert (aborted[0], aborted[2]) == (ABORT, "wamp.error.protocol_violation")
    assert await client.closed() == b""


@pytest_twisted.ensureDeferred
async def test_a_message_over_the_limit_is_answered_and_one_over_what_the_peer_takes_is_not_sent(start_server):
    server = await start_server({**RAWSOCKET, "wamp.max_message_bytes": 4096})
    client = await RawClient.connect(server)
    # the router asks for at most 4,096 bytes (2 ** (9 + 3)); the client takes at most 1,024
    assert await client.handshake(JSON, 1) == bytes((MAGIC, 3 << 4 | JSON, 0, 0))
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert await client.recv() == [CHALLENGE, "ticket", {}]
    await client.send([AUTHENTICATE, await server.session(role="admin"), {}])
    assert (await client.recv())[0] == WELCOME
    await client.send([CALL, 1, {}, "eform.status", ["x" * 5000]])  # within twice the limit: read and answered
    error = await client.recv()
    assert error[:5] == [ERROR, CALL, 1, {}, "wamp.error.payload_size_exceeded"], error
    await client.send([SUBSCRIBE, 2, {}, "app.big"])
    assert (await client.recv())[:2] == [SUBSCRIBED, 2]
    publisher = await join(server, role="admin")
    await within(publisher.publish("app.big", "x" * 2000, options=ACKNOWLEDGED))  # over 1,024: not sent to it
    await within(publisher.publish("app.big", "small", options=ACKNOWLEDGED))
    event = await client.recv()
    assert (event[0], event[4:]) == (EVENT, [["small"]]), event
    await leave(publisher)


@pytest_twisted.ensureDeferred
async def test_without_a_handshake_or_a_session_in_time_the_connection_is_closed(start_server):
    server = await start_server({**RAWSOCKET, "websocket.open_handshake_timeout": 0.3})
    silent = await RawClient.connect(server)
    assert await silent.closed() == b""
    handshaken = await RawClient.connect(server)
    await handshaken.handshake()
    assert await handshaken.closed() == b""


@pytest_twisted.ensureDeferred
async def test_over_the_rate_limit_a_request_is_refused_as_on_wamp(start_server):
    server = await start_server({**RAWSOCKET, "wamp.rate_limit": 0.1, "wamp.rate_burst": 3})
    client = await raw_join(server)  # HELLO and AUTHENTICATE took two tokens
    await client.send([CALL, 1, {}, "eform.status"])
    await client.send([CALL, 2, {}, "eform.status"])
    assert (await client.recv())[:2] == [RESULT, 1]
    refused = await client.recv()
    assert refused[:5] == [ERROR, CALL, 2, {}, "eform.error.rate_limited"], refused


@pytest_twisted.ensureDeferred
async def test_a_rawsocket_subscriber_that_stops_reading_is_dropped(start_server):
    limit = 128 * 1024
    server = await start_server({**RAWSOCKET, "websocket.max_unsent_bytes": limit,
                                 "wamp.max_message_bytes": limit // 2})
    closes_before = SLOW_CLOSES.get()
    client = await RawClient.connect(server, receive_buffer=4096)
    await client.handshake()
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    await client.recv()
    await client.send([AUTHENTICATE, await server.session(role="staff"), {}])
    await client.recv()
    await client.send([SUBSCRIBE, 1, {}, "eform.lockers"])
    assert (await client.recv())[0] == SUBSCRIBED
    client.stall()
    for n in range(1000):
        server.service.events.broadcast("/ws/lockers", "tick", {"n": n, "pad": "x" * 1600})
        if not wamp_sessions(server):
            break
        if n % 20 == 0:
            await within(deferred_later(0))
    assert wamp_sessions(server) == {}
    assert SLOW_CLOSES.get() - closes_before == 1


def deferred_later(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


# -- twistd eformws ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_twistd_serves_the_rawsocket_port_it_bound_before_starting(tmp_path, spawn):
    from processes import create_session, free_port, write_config

    port = free_port()
    config = write_config(tmp_path, f"[wamp]\nrawsocket_port = {port}\n")
    gateway = await spawn(["--config", str(config)], tmp_path)
    await gateway.process.line(rf"serving WAMP over RawSocket on 127\.0\.0\.1:{port}")
    ticket = await create_session(tmp_path, config, role="staff")
    server = SimpleNamespace(service=SimpleNamespace(rawsocket_port=port))
    peer = open_rawsocket_peer(server, "msgpack", ticket=ticket)
    assert (await within(peer.joined, 10)).authrole == "staff"
    await leave(peer)


@pytest_twisted.ensureDeferred
async def test_a_rawsocket_port_in_use_ends_twistd_with_one_line_and_exit_1(tmp_path):
    import socket

    from processes import TWISTD, run, write_config

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        config = write_config(tmp_path, f"[wamp]\nrawsocket_port = {taken}\n")
        out, err, code = await run(TWISTD, "-n", "--pidfile=", "eformws", "--config", str(config), cwd=tmp_path)
    assert (err, code) == (f"eformws: cannot listen on 127.0.0.1:{taken}: address already in use (another process "
                           "listens there: stop it, or choose --port)\n", 1)


# -- what an attack found (each failed before its fix) -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_ping_is_paid_by_its_size_as_a_message_is_and_one_it_cannot_pay_closes(start_server):
    # 1 token a second, 10 deep: at 4 KiB a token, a peer may make the router read 40 KiB
    server = await start_server({**RAWSOCKET, "wamp.rate_limit": 1, "wamp.rate_burst": 10})
    client = await RawClient.connect(server)
    await client.handshake()  # nobody authenticated: a PING is answered all the same
    echoed = 0
    for _ in range(8):
        client.send_frame(b"x" * 1_000_000, PING)
        frame = await client.recv_frame()
        if frame is None:
            break
        echoed += len(frame[1])
    assert echoed <= 10 * 4096, f"{echoed} bytes read and echoed for 8 tokens"
    assert await client.closed() == b""


@pytest_twisted.ensureDeferred
async def test_a_connection_over_server_max_connections_is_told_and_closed_at_once(start_server):
    server = await start_server({**RAWSOCKET, "server.max_connections": 2, "websocket.open_handshake_timeout": 8})
    held = [await RawClient.connect(server) for _ in range(2)]  # within the limit, sending nothing yet
    over = await RawClient.connect(server)  # sends nothing either: refused without waiting for its handshake
    assert await over.closed(timeout=2) == bytes((MAGIC, 4 << 4, 0, 0))  # error 4: connection count
    assert len(held) == 2


@pytest_twisted.ensureDeferred
async def test_a_pong_is_never_over_the_length_the_peers_handshake_asked_for(start_server):
    server = await start_server(RAWSOCKET)
    client = await RawClient.connect(server)
    await client.handshake(JSON, 1)  # takes at most 1,024 octets
    client.send_frame(b"p" * 4096, PING)
    client.send_frame(b"small", PING)
    assert await client.recv_frame() == (PONG, b"small")  # the big one was not answered


@pytest_twisted.ensureDeferred
async def test_a_rawsocket_connection_probes_its_peer_as_often_as_wamp_pings(start_server):
    import socket

    server = await start_server({**RAWSOCKET, "websocket.ping_interval": 5, "websocket.ping_timeout": 3})
    await raw_join(server)
    (connection,) = server.service.wamp.connections.values()
    handle = connection.transport.getHandle()
    assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    options = [handle.getsockopt(socket.IPPROTO_TCP, option)
               for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT, socket.TCP_USER_TIMEOUT)]
    assert options == [5, 3, 2, 8000]  # a vanished peer is dropped within about 11 s, not 2 h 11 min
