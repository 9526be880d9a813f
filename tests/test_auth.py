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
from conftest import REFUSED, accepted, aio, assert_got_nothing, bearer, refused
from logcheck import LogCapture

from eformws.sessions.sqlite import create_session

# -- helpers ---------------------------------------------------------------------


def cookie(value: str) -> dict:
    return {"Cookie": value}


def unknown_id() -> str:
    """An id in the store's format that was never issued."""
    return secrets.token_urlsafe(32)


def percent_encoded(session_id: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in session_id)


ADMIN_ONLY = "/ws/ops"

ADMIN_ONLY_CONFIG = f"""
[[namespaces]]
path = "{ADMIN_ONLY}"
default_room = "ops_room"
require_auth = true
roles = ["admin"]
"""

CONFIGURED_COOKIE = {"auth.cookie_names": ["eform_sid"]}


def place(test_id: str, credentials, overrides: dict | None = None):
    """One parametrization: `credentials(session_id)` gives the (query string, headers) a
    client connects to /ws/lockers with; `overrides` configure the server."""
    return pytest.param(credentials, overrides or {}, id=test_id)


async def connect_lockers(start_server, credentials, overrides):
    """A server configured with `overrides`, a valid admin session, and a client connected
    to /ws/lockers with what `credentials` makes of that session's id."""
    server = await start_server(overrides)
    query, headers = credentials(await server.session())
    return await server.connect("/ws/lockers" + query, additional_headers=headers)


# -- where the session id comes from, and the order candidates are tried in -------------------


@pytest.mark.parametrize("credentials, overrides", [
    place("cookie-sessionId", lambda sid: ("", cookie(f"sessionId={sid}"))),
    place("cookie-session", lambda sid: ("", cookie(f"session={sid}"))),
    place("cookie-among-other-cookies", lambda sid: ("", cookie(f"theme=dark; sessionId={sid}; lang=de"))),
    place("cookie-double-quoted-is-unquoted", lambda sid: ("", cookie(f'sessionId="{sid}"'))),
    place("cookie-configured-name", lambda sid: ("", cookie(f"eform_sid={sid}")), CONFIGURED_COOKIE),
    place("cookie-duplicate-bad-then-good", lambda sid: ("", cookie(f"sessionId={unknown_id()}; sessionId={sid}"))),
    # Two Cookie header lines (as some proxies and HTTP/2 gateways send them).
    place("cookie-second-header-after-a-bad-one",
          lambda sid: ("", [("Cookie", f"sessionId={unknown_id()}"), ("Cookie", f"sessionId={sid}")])),
    place("authorization-bearer", lambda sid: ("", bearer(sid))),
    place("authorization-scheme-case-insensitive", lambda sid: ("", {"Authorization": f"bearer {sid}"})),
    place("query-parameter", lambda sid: (f"?sessionId={sid}", {})),
    # The contrast to the cookie: a query string is URL-encoded by definition.
    place("query-percent-encoded-is-decoded", lambda sid: (f"?sessionId={percent_encoded(sid)}", {})),
    place("invalid-cookie-then-valid-bearer",
          lambda sid: ("", {**cookie(f"sessionId={unknown_id()}"), **bearer(sid)})),
    place("invalid-cookie-and-bearer-then-valid-query",
          lambda sid: (f"?sessionId={sid}", {**cookie(f"sessionId={unknown_id()}"), **bearer(unknown_id())})),
])
@pytest_twisted.ensureDeferred
async def test_a_valid_session_id_is_accepted(start_server, credentials, overrides):
    client = await connect_lockers(start_server, credentials, overrides)
    assert (await accepted(client))["authenticated"] is True
    await client.close()


@pytest.mark.parametrize("credentials, overrides", [
    place("no-candidate", lambda sid: ("", {})),
    place("authorization-other-scheme", lambda sid: ("", {"Authorization": f"Basic {sid}"})),
    # Parsed as cookie pairs, not found by substring: `xsessionId` is another cookie.
    place("cookie-name-only-ending-in-sessionId", lambda sid: ("", cookie(f"xsessionId={sid}"))),
    place("cookie-sessionId-inside-another-value", lambda sid: ("", cookie(f"prefs=sessionId={sid}"))),
    place("cookie-default-name-when-names-are-configured",
          lambda sid: ("", cookie(f"sessionId={sid}")), CONFIGURED_COOKIE),
])
@pytest_twisted.ensureDeferred
async def test_no_candidate_is_closed_authentication_required(start_server, credentials, overrides):
    client = await connect_lockers(start_server, credentials, overrides)
    assert await refused(client) == (REFUSED, "Authentication required")


@pytest.mark.parametrize("credentials, overrides", [
    place("unknown-id", lambda sid: (f"?sessionId={unknown_id()}", {})),
    place("only-invalid-candidates-in-every-place", lambda sid: (
        f"?sessionId={unknown_id()}",
        {**cookie(f"sessionId={unknown_id()}; session={unknown_id()}"), **bearer(unknown_id())},
    )),
    # Pinned: cookie values are taken as they are (ids are URL-safe base64 and never need
    # encoding), so the encoded form of a valid id is a different, unknown id.
    place("cookie-percent-encoded-is-not-decoded", lambda sid: ("", cookie(f"sessionId={percent_encoded(sid)}"))),
    place("oversized-10-KiB-id", lambda sid: ("", cookie("sessionId=" + "A" * 10240))),
])
@pytest_twisted.ensureDeferred
async def test_only_invalid_candidates_are_closed_authentication_failed(start_server, credentials, overrides):
    client = await connect_lockers(start_server, credentials, overrides)
    assert await refused(client) == (REFUSED, "Authentication failed")


async def expired(server) -> str:
    session = await server.service.database.run(create_session, "alice", "admin", None, 1, time.time() - 10)
    return session.id


async def revoked(server) -> str:
    session_id = await server.session()
    assert await server.service.sessions.revoke(session_id) == 1
    return session_id


@pytest.mark.parametrize("no_longer_valid", [expired, revoked], ids=["expired", "revoked"])
@pytest_twisted.ensureDeferred
async def test_a_session_no_longer_valid_is_closed_authentication_failed(server, no_longer_valid):
    client = await server.connect(f"/ws/lockers?sessionId={await no_longer_valid(server)}")
    assert await refused(client) == (REFUSED, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_server_keeps_serving_after_an_oversized_session_id(server):
    oversized = await server.connect("/ws/lockers", additional_headers=cookie("sessionId=" + "A" * 10240))
    await refused(oversized)
    session_id = await server.session()
    client = await server.connect(f"/ws/lockers?sessionId={session_id}")
    assert (await accepted(client))["authenticated"] is True
    await client.close()


# -- roles: the first valid candidate decides -------------------------------------------------
# Observable through the role on an admin-only namespace: each case has a staff and an admin
# session, and whichever of them the first valid candidate names is the connection's.


def roles(test_id: str, credentials):
    """`credentials(staff, admin)`: the (query string, headers) to connect with."""
    return pytest.param(credentials, id=test_id)


@pytest.mark.parametrize("credentials", [
    roles("admin-query", lambda staff, admin: (f"?sessionId={admin}", {})),
    roles("admin-cookie-before-staff-bearer-and-query",
          lambda staff, admin: (f"?sessionId={staff}", {**cookie(f"sessionId={admin}"), **bearer(staff)})),
])
@pytest_twisted.ensureDeferred
async def test_a_role_allowed_on_the_namespace_is_accepted(start_configured, credentials):
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    admin = await server.session(user="ada", role="admin")
    query, headers = credentials(staff, admin)
    client = await server.connect(ADMIN_ONLY + query, additional_headers=headers)
    data = await accepted(client)
    assert data["namespace"] == ADMIN_ONLY and data["authenticated"] is True
    await client.close()


@pytest.mark.parametrize("credentials", [
    roles("staff-query", lambda staff, admin: (f"?sessionId={staff}", {})),
    # The cookie's staff session is tried first and wins, although the bearer's admin
    # session would be allowed; and so on down the order.
    roles("staff-cookie-before-admin-bearer",
          lambda staff, admin: ("", {**cookie(f"sessionId={staff}"), **bearer(admin)})),
    roles("staff-bearer-before-admin-query", lambda staff, admin: (f"?sessionId={admin}", bearer(staff))),
])
@pytest_twisted.ensureDeferred
async def test_a_role_not_allowed_on_the_namespace_is_closed_forbidden(start_configured, credentials):
    server = await start_configured(ADMIN_ONLY_CONFIG)
    staff = await server.session(user="sam", role="staff")
    admin = await server.session(user="ada", role="admin")
    query, headers = credentials(staff, admin)
    client = await server.connect(ADMIN_ONLY + query, additional_headers=headers)
    assert await refused(client) == (REFUSED, "Forbidden")


# -- namespaces without authentication -------------------------------------------------------


async def valid_id(server) -> str:
    return await server.session()


async def no_id(server) -> None:
    return None


async def an_unknown_id(server) -> str:
    return unknown_id()


@pytest.mark.parametrize("session_id, authenticated", [
    pytest.param(no_id, False, id="anonymous"),
    pytest.param(valid_id, True, id="valid-session"),
    pytest.param(an_unknown_id, False, id="invalid-credential-ignored"),
])
@pytest_twisted.ensureDeferred
async def test_namespace_without_auth_accepts_the_client_without_a_room(server, session_id, authenticated):
    server.hub.create_namespace("/ws/custom", require_auth=False)
    sid = await session_id(server)
    client = await server.connect("/ws/custom" + (f"?sessionId={sid}" if sid is not None else ""))
    connection = await client.recv()
    assert connection["type"] == "connection"
    assert connection["data"]["namespace"] == "/ws/custom"
    assert connection["data"]["authenticated"] is authenticated
    # No default room, so no room_joined: the next thing the client gets is the pong.
    await assert_got_nothing(client)
    await client.close()


# -- session ids never reach the logs ------------------------------------------------------------


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
