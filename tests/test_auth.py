"""Authentication (PROTOCOL.md section 2, docs/protocol.md section 2), as a client sees it:
where a session id may come from, the order candidates are tried in, the close codes and
reasons of every failure, role checks per namespace, anonymous namespaces, and that a
session id never reaches the server's logs.

Every test runs a real server (port 0, a real SQLite file) and connects with the
`websockets` client."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import pytest_twisted
from conftest import aio
from twisted.logger import formatEvent, globalLogPublisher
from websockets.exceptions import ConnectionClosed

from eformws.sessions.sqlite import create_session

REFUSED = 1008


# -- helpers ---------------------------------------------------------------------


async def accepted(client) -> dict:
    """Read `connection` then `room_joined` (the namespace has a default room); return the
    connection data. Fails if the server refused or sent anything else first."""
    connection = await client.recv()
    assert connection["type"] == "connection", connection
    joined = await client.recv()
    assert joined["type"] == "room_joined", joined
    return connection["data"]


async def refused(client) -> tuple[int, str]:
    """The handshake completed, then the server closed before sending any message: the
    (code, reason) it closed with."""
    with pytest.raises(ConnectionClosed):
        message = await aio(asyncio.wait_for(client.connection.recv(), 5.0))
        pytest.fail(f"refused connection got a message first: {message!r}")
    return await client.closed()


def cookie(value: str) -> dict:
    return {"Cookie": value}


def bearer(session_id: str) -> dict:
    return {"Authorization": f"Bearer {session_id}"}


def unknown_id() -> str:
    """An id in the store's format that was never issued."""
    return secrets.token_urlsafe(32)


ADMIN_ONLY = "/ws/ops"

ADMIN_ONLY_CONFIG = f"""
[[namespaces]]
path = "{ADMIN_ONLY}"
default_room = "ops_room"
require_auth = true
roles = ["admin"]
"""


# -- where the session id comes from ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_id_accepted_from_cookie_named_sessionId(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"sessionId={session_id}"))
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_session_id_accepted_from_cookie_named_session(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"session={session_id}"))
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_session_id_accepted_among_other_cookies(server):
    session_id = await server.session()
    header = cookie(f"theme=dark; sessionId={session_id}; lang=de")
    client = await server.connect("/ws/lockers", additional_headers=header)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_session_id_accepted_from_authorization_bearer(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=bearer(session_id))
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_session_id_accepted_from_query_parameter(server):
    session_id = await server.session()
    client = await server.connect(f"/ws/lockers?sessionId={session_id}")
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_authorization_scheme_is_case_insensitive(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers={"Authorization": f"bearer {session_id}"})
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_authorization_with_another_scheme_is_no_candidate(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers={"Authorization": f"Basic {session_id}"})
    assert await refused(client) == (REFUSED, "Authentication required")


# -- order of trial ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_invalid_cookie_then_valid_bearer_is_accepted(server):
    session_id = await server.session()
    headers = {**cookie(f"sessionId={unknown_id()}"), **bearer(session_id)}
    client = await server.connect("/ws/lockers", additional_headers=headers)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_invalid_cookie_and_bearer_then_valid_query_is_accepted(server):
    session_id = await server.session()
    headers = {**cookie(f"sessionId={unknown_id()}"), **bearer(unknown_id())}
    client = await server.connect(f"/ws/lockers?sessionId={session_id}", additional_headers=headers)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_valid_cookie_wins_over_valid_bearer(start_configured):
    # Observable through the role: the cookie's staff session is tried first and wins, so the
    # admin-only namespace refuses, although the bearer's admin session would be allowed.
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    admin = await server.session(user="ada", role="admin")
    headers = {**cookie(f"sessionId={staff}"), **bearer(admin)}
    client = await server.connect(ADMIN_ONLY, additional_headers=headers)
    assert await refused(client) == (REFUSED, "Forbidden")


@pytest_twisted.ensureDeferred
async def test_valid_bearer_wins_over_valid_query(start_configured):
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    admin = await server.session(user="ada", role="admin")
    client = await server.connect(f"{ADMIN_ONLY}?sessionId={admin}", additional_headers=bearer(staff))
    assert await refused(client) == (REFUSED, "Forbidden")


@pytest_twisted.ensureDeferred
async def test_first_valid_candidate_decides_the_role(start_configured):
    # The mirror image of the two tests above: admin first, staff after, is accepted.
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    admin = await server.session(user="ada", role="admin")
    headers = {**cookie(f"sessionId={admin}"), **bearer(staff)}
    client = await server.connect(f"{ADMIN_ONLY}?sessionId={staff}", additional_headers=headers)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


# -- failures --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_candidate_is_closed_authentication_required(server):
    client = await server.connect("/ws/lockers")
    assert await refused(client) == (REFUSED, "Authentication required")


@pytest_twisted.ensureDeferred
async def test_unknown_session_id_is_closed_authentication_failed(server):
    client = await server.connect(f"/ws/lockers?sessionId={unknown_id()}")
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_expired_session_is_closed_authentication_failed(server):
    session = await server.service.database.run(create_session, "alice", "admin", None, 1, time.time() - 10)
    client = await server.connect(f"/ws/lockers?sessionId={session.id}")
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_revoked_session_is_closed_authentication_failed(server):
    session_id = await server.session()
    assert await server.service.sessions.revoke(session_id) == 1
    client = await server.connect(f"/ws/lockers?sessionId={session_id}")
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_only_invalid_candidates_in_every_place_is_closed_authentication_failed(server):
    headers = {**cookie(f"sessionId={unknown_id()}; session={unknown_id()}"), **bearer(unknown_id())}
    client = await server.connect(f"/ws/lockers?sessionId={unknown_id()}", additional_headers=headers)
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_role_not_allowed_on_namespace_is_closed_forbidden(start_configured):
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    client = await server.connect(f"{ADMIN_ONLY}?sessionId={staff}")
    assert await refused(client) == (REFUSED, "Forbidden")


@pytest_twisted.ensureDeferred
async def test_role_allowed_on_namespace_is_accepted(start_configured):
    server = await start_configured(ADMIN_ONLY_CONFIG)
    admin = await server.session(user="ada", role="admin")
    client = await server.connect(f"{ADMIN_ONLY}?sessionId={admin}")
    data = await accepted(client)
    assert data["namespace"] == ADMIN_ONLY and data["authenticated"] is True
    await client.close()


# -- cookie parsing ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cookie_whose_name_only_ends_in_sessionId_is_no_candidate(server):
    # Parsed as cookie pairs, not found by substring: `xsessionId` is another cookie, so no
    # candidate is present at all.
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"xsessionId={session_id}"))
    assert await refused(client) == (REFUSED, "Authentication required")


@pytest_twisted.ensureDeferred
async def test_session_id_inside_another_cookie_value_is_no_candidate(server):
    session_id = await server.session()
    header = cookie(f"prefs=sessionId={session_id}")
    client = await server.connect("/ws/lockers", additional_headers=header)
    assert await refused(client) == (REFUSED, "Authentication required")


@pytest_twisted.ensureDeferred
async def test_duplicate_cookie_bad_then_good_is_accepted(server):
    session_id = await server.session()
    header = cookie(f"sessionId={unknown_id()}; sessionId={session_id}")
    client = await server.connect("/ws/lockers", additional_headers=header)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_second_cookie_header_with_valid_id_after_a_bad_one_is_accepted(server):
    # Two Cookie header lines (as some proxies and HTTP/2 gateways send them).
    session_id = await server.session()
    headers = [("Cookie", f"sessionId={unknown_id()}"), ("Cookie", f"sessionId={session_id}")]
    client = await server.connect("/ws/lockers", additional_headers=headers)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_configured_cookie_name_is_accepted(start_server):
    server = await start_server({"auth.cookie_names": ["eform_sid"]})
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"eform_sid={session_id}"))
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_default_cookie_name_is_no_candidate_when_names_are_configured(start_server):
    server = await start_server({"auth.cookie_names": ["eform_sid"]})
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"sessionId={session_id}"))
    assert await refused(client) == (REFUSED, "Authentication required")


@pytest_twisted.ensureDeferred
async def test_percent_encoded_cookie_value_is_not_decoded(server):
    # Pinned: cookie values are taken as they are (ids are URL-safe base64 and never need
    # encoding), so the encoded form of a valid id is a different, unknown id.
    session_id = await server.session()
    encoded = "".join(f"%{ord(c):02X}" for c in session_id)
    client = await server.connect("/ws/lockers", additional_headers=cookie(f"sessionId={encoded}"))
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_percent_encoded_query_value_is_decoded(server):
    # The contrast to the cookie: a query string is URL-encoded by definition.
    session_id = await server.session()
    encoded = "".join(f"%{ord(c):02X}" for c in session_id)
    client = await server.connect(f"/ws/lockers?sessionId={encoded}")
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_double_quoted_cookie_value_is_unquoted(server):
    session_id = await server.session()
    client = await server.connect("/ws/lockers", additional_headers=cookie(f'sessionId="{session_id}"'))
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_oversized_session_id_is_closed_authentication_failed(server):
    client = await server.connect("/ws/lockers", additional_headers=cookie("sessionId=" + "A" * 10240))
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_server_keeps_serving_after_an_oversized_session_id(server):
    oversized = await server.connect("/ws/lockers", additional_headers=cookie("sessionId=" + "A" * 10240))
    await refused(oversized)
    session_id = await server.session()
    client = await server.connect(f"/ws/lockers?sessionId={session_id}")
    assert (await accepted(client))["authenticated"] is True
    await client.close()


# -- namespaces without authentication -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_namespace_without_auth_accepts_anonymous_client_without_room(server):
    server.hub.create_namespace("/ws/custom", require_auth=False)
    client = await server.connect("/ws/custom")
    connection = await client.recv()
    assert connection["type"] == "connection"
    assert connection["data"]["namespace"] == "/ws/custom"
    assert connection["data"]["authenticated"] is False
    # No default room, so no room_joined: the next thing the client gets is the pong.
    await client.send({"type": "ping", "data": {"timestamp": 7}})
    reply = await client.recv()
    assert reply["type"] == "pong" and reply["data"]["timestamp"] == 7, reply
    await client.close()


@pytest_twisted.ensureDeferred
async def test_namespace_without_auth_marks_valid_session_authenticated(server):
    server.hub.create_namespace("/ws/custom", require_auth=False)
    session_id = await server.session()
    client = await server.connect(f"/ws/custom?sessionId={session_id}")
    connection = await client.recv()
    assert connection["type"] == "connection"
    assert connection["data"]["authenticated"] is True
    await client.close()


@pytest_twisted.ensureDeferred
async def test_namespace_without_auth_ignores_invalid_credential(server):
    server.hub.create_namespace("/ws/custom", require_auth=False)
    client = await server.connect(f"/ws/custom?sessionId={unknown_id()}")
    connection = await client.recv()
    assert connection["type"] == "connection"
    assert connection["data"]["authenticated"] is False
    await client.close()


# -- session ids never reach the logs ------------------------------------------------------------


class LogCapture:
    """Every event on Twisted's global log publisher (where Autobahn's txaio logs go) while
    active, formatted as text."""

    def __init__(self):
        self.events = []

    def __enter__(self):
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.events.append)

    def texts(self) -> list[str]:
        texts = []
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            texts.append(text)
        return texts


@pytest_twisted.ensureDeferred
async def test_session_id_from_query_is_not_logged_on_accepted_connection(start_server):
    # log.level = debug: the level at which Autobahn would log the request line with its
    # query string; the server must keep Autobahn's handshake logging off anyway.
    server = await start_server({"log.level": "debug"})
    session_id = await server.session()
    with LogCapture() as capture:
        client = await server.connect(f"/ws/lockers?sessionId={session_id}")
        await accepted(client)
        await client.close()
    leaks = [text for text in capture.texts() if session_id in text]
    assert leaks == []


@pytest_twisted.ensureDeferred
async def test_session_id_from_query_is_not_logged_on_refused_connection(start_configured):
    server = await start_configured('[log]\nlevel = "debug"\n' + ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    with LogCapture() as capture:
        client = await server.connect(f"{ADMIN_ONLY}?sessionId={staff}")
        assert await refused(client) == (REFUSED, "Forbidden")
    texts = capture.texts()
    assert any("Forbidden" in text for text in texts), texts  # the refusal was logged...
    assert [text for text in texts if staff in text] == []  # ...without the id


@pytest_twisted.ensureDeferred
async def test_session_id_from_query_is_not_in_access_log_of_unknown_namespace(start_server):
    import websockets

    server = await start_server({"log.level": "debug"})
    session_id = await server.session()
    with LogCapture() as capture:
        with pytest.raises(websockets.InvalidStatus):
            await server.connect(f"/ws/nowhere?sessionId={session_id}")
    texts = capture.texts()
    assert any("/ws/nowhere" in text and "404" in text for text in texts), texts  # the access line
    assert [text for text in texts if session_id in text] == []


async def raw_handshake(port: int, target: bytes) -> bytes:
    """Send a WebSocket upgrade request for `target` byte for byte (no client library would
    send these targets) and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


# Bytes that Twisted's HTTP parser leaves inside the request target but that Autobahn, which
# re-parses the request line as Latin-1 text, takes for a line break (NEL) or a space (NBSP):
# it then refuses the request and quotes the request line in its refusal.
RESPLIT = pytest.mark.parametrize("byte", [b"\x85", b"\xa0"], ids=["NEL", "NBSP"])


@RESPLIT
@pytest_twisted.ensureDeferred
async def test_session_id_is_not_logged_when_autobahn_refuses_the_request_line(server, byte):
    session_id = await server.session()
    target = b"/ws/lockers?sessionId=" + session_id.encode() + b"&x=" + byte + b"y"
    with LogCapture() as capture:
        answer = await aio(raw_handshake(server.port, target))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    texts = capture.texts()
    assert any("Bad HTTP request status line" in text for text in texts), texts  # the refusal was logged...
    assert [text for text in texts if session_id in text] == []  # ...without the id


@RESPLIT
@pytest_twisted.ensureDeferred
async def test_session_id_is_not_echoed_when_autobahn_refuses_the_request_line(server, byte):
    session_id = await server.session()
    target = b"/ws/lockers?sessionId=" + session_id.encode() + b"&x=" + byte + b"y"
    answer = await aio(raw_handshake(server.port, target))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert session_id.encode() not in answer


def test_new_session_ids_never_start_with_a_dash():
    from eformws.sessions import new_session_id

    ids = [new_session_id() for _ in range(2000)]  # about 31 of 2000 would, drawn plainly
    assert not any(session_id.startswith("-") for session_id in ids)
    assert len(set(ids)) == len(ids) and all(len(session_id) == 43 for session_id in ids)
