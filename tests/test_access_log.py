"""The access log (`log.access`): a line with fields per answered HTTP request, never its
query; none for a WebSocket connection; none at all when turned off."""

from __future__ import annotations

import pytest
import pytest_twisted
import treq
from logcheck import LogCapture
from twisted.logger import formatEvent

ACCESS = "eformws.http.access"
SECRET = "s3cr3t-in-the-query"


def access_events(capture: LogCapture) -> list[dict]:
    return [event for event in capture.events if event.get("log_namespace") == ACCESS]


async def request_then_connect(server) -> list[dict]:
    """GET /api/websocket/health?sessionId=SECRET (401), then a WebSocket client of /ws/lockers:
    the access events logged meanwhile."""
    session_id = await server.session("bob", "staff")
    with LogCapture() as capture:
        response = await treq.get(server.http(f"/api/websocket/health?sessionId={SECRET}"), persistent=False)
        await response.content()
        client = await server.join("/ws/lockers", session_id)
        await client.close()
    return access_events(capture)


@pytest_twisted.ensureDeferred
async def test_an_http_request_is_logged_with_client_method_path_status_and_size_and_never_its_query(start_server):
    server = await start_server()
    events = await request_then_connect(server)
    (event,) = events
    assert {k: event[k] for k in ("client", "method", "path", "status")} == {
        "client": "127.0.0.1", "method": "GET", "path": "/api/websocket/health", "status": 401}
    assert event["size"] > 0
    assert formatEvent(event) == f'127.0.0.1 "GET /api/websocket/health" 401 {event["size"]}'
    assert SECRET not in repr(event)


@pytest_twisted.ensureDeferred
async def test_a_websocket_connection_has_no_access_line(start_server):
    server = await start_server()
    assert [e["status"] for e in await request_then_connect(server)] == [401]


@pytest_twisted.ensureDeferred
async def test_nothing_is_logged_when_access_is_off(start_server):
    server = await start_server({"log.access": False})
    assert await request_then_connect(server) == []


@pytest.mark.parametrize("value", ["off", "", 1])
def test_an_unknown_access_setting_is_refused(value, tmp_path):
    from conftest import make_config

    with pytest.raises(Exception, match="log.access"):
        make_config(tmp_path, **{"log.access": value})


@pytest.mark.parametrize("spelling", [
    "/api/websocket/sessions/{id}", "/api/websocket/session%73/{id}", "/api/websocket/sessions%2F{id}",
    "/api/websocket/%73essions/{id}", "/api%2Fwebsocket/sessions/{id}", "/API/websocket//sessions/{id}",
    "/api/websocket/session%2573/{id}",
])
@pytest_twisted.ensureDeferred
async def test_a_session_id_in_a_revoke_path_never_reaches_the_access_log_however_it_is_spelled(start_server,
                                                                                               spelling):
    server = await start_server({"auth.api_tokens": ["tok"]})
    victim = await server.session("bob", "staff")
    with LogCapture() as capture:
        response = await treq.delete(server.http(spelling.format(id=victim)), persistent=False,
                                     headers={b"Authorization": [b"Bearer tok"]})
        await response.content()
    (event,) = access_events(capture)
    assert event["path"].endswith("/sessions/<not a reference>")
    assert victim not in formatEvent(event) and victim not in repr(capture.events)


@pytest_twisted.ensureDeferred
async def test_a_very_long_path_is_cut_in_the_access_log(start_server):
    server = await start_server()
    with LogCapture() as capture:
        response = await treq.get(server.http("/x" * 2000), persistent=False)
        await response.content()
    (event,) = access_events(capture)
    assert event["path"] == "/x" * 500 + "... (4000 characters)"
