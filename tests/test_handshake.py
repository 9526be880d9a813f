"""What the HTTP side of the WebSocket handshake answers (PROTOCOL.md sections 1 and 2,
docs/protocol.md section 2): 404 for paths that are no namespace, the Origin allow-list
(403), and the connection limit (503), against a real server with the `websockets` client."""

from __future__ import annotations

import pytest_twisted
from conftest import accepted, handshake_status

LOCKERS = "/ws/lockers"


async def open_connection(server, session_id: str, **kwargs):
    """Connect to /ws/lockers and read `connection` and `room_joined`: (client, the server's
    side of the connection)."""
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}", **kwargs)
    data = await accepted(client)
    assert data["authenticated"] is True
    return client, server.hub.namespaces[LOCKERS].connections[data["connectionId"]]


# -- paths ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_namespace_is_http_404(server):
    assert await handshake_status(server, "/ws/x") == 404


@pytest_twisted.ensureDeferred
async def test_unknown_namespace_is_http_404_with_valid_session(server):
    session_id = await server.session()
    assert await handshake_status(server, f"/ws/x?sessionId={session_id}") == 404


@pytest_twisted.ensureDeferred
async def test_known_namespace_followed_by_more_path_is_http_404(server):
    assert await handshake_status(server, "/ws/lockers/extra") == 404


@pytest_twisted.ensureDeferred
async def test_namespace_added_at_runtime_is_served(server):
    assert await handshake_status(server, "/ws/custom") == 404
    server.hub.create_namespace("/ws/custom", require_auth=False)
    client = await server.connect("/ws/custom")
    connection = await client.recv()
    assert connection["type"] == "connection" and connection["data"]["namespace"] == "/ws/custom"
    await client.close()


# -- Origin allow-list ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_origin_not_in_allow_list_is_http_403(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    session_id = await server.session()
    status = await handshake_status(server, f"{LOCKERS}?sessionId={session_id}", origin="https://evil.example")
    assert status == 403


@pytest_twisted.ensureDeferred
async def test_origin_in_allow_list_is_accepted(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    session_id = await server.session()
    client, _ = await open_connection(server, session_id, origin="https://panel.example")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_handshake_without_origin_is_accepted_with_an_allow_list(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    session_id = await server.session()
    client, _ = await open_connection(server, session_id)  # websockets sends no Origin unless told
    await client.close()


@pytest_twisted.ensureDeferred
async def test_handshake_without_origin_still_needs_a_valid_session(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    client = await server.connect(f"{LOCKERS}?sessionId=forged")
    assert await client.closed() == (1008, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_default_config_accepts_any_origin(server):
    session_id = await server.session()
    client, _ = await open_connection(server, session_id, origin="https://anywhere.example")
    await client.close()


# -- connection limit ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_handshake_over_connection_limit_is_http_503(start_server):
    server = await start_server({"server.max_connections": 2})
    session_id = await server.session()
    first, _ = await open_connection(server, session_id)
    second, _ = await open_connection(server, session_id)
    assert await handshake_status(server, f"{LOCKERS}?sessionId={session_id}") == 503
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_connection_limit_counts_across_namespaces(start_server):
    server = await start_server({"server.max_connections": 2})
    session_id = await server.session()
    first, _ = await open_connection(server, session_id)
    second, _ = await open_connection(server, session_id)
    assert await handshake_status(server, f"/ws/help?sessionId={session_id}") == 503
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_closed_connection_frees_its_place_under_the_limit(start_server):
    server = await start_server({"server.max_connections": 2})
    session_id = await server.session()
    first, first_on_server = await open_connection(server, session_id)
    second, _ = await open_connection(server, session_id)
    assert await handshake_status(server, f"{LOCKERS}?sessionId={session_id}") == 503
    released = first_on_server.closed  # fires once the server has let the connection go
    await first.close()
    await released
    third, _ = await open_connection(server, session_id)
    await second.close()
    await third.close()


@pytest_twisted.ensureDeferred
async def test_refused_handshake_takes_no_place_under_the_limit(start_server):
    # Three rejections in a row at the limit: none of them may use up a place, so once a
    # real connection closes, the next one is accepted.
    server = await start_server({"server.max_connections": 1})
    session_id = await server.session()
    first, first_on_server = await open_connection(server, session_id)
    for _ in range(3):
        assert await handshake_status(server, f"{LOCKERS}?sessionId={session_id}") == 503
    released = first_on_server.closed
    await first.close()
    await released
    second, _ = await open_connection(server, session_id)
    await second.close()
