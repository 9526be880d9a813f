"""The HTTP API (PROTOCOL.md section 7) against an in-process server: status and its
latency metrics, REST broadcast (auth, validation, delivery), /healthz, unknown paths,
and that no response ever carries a session id.

HTTP goes through treq (non-persistent connections, so nothing outlives a test's server);
WebSocket clients are `websockets` connections on the same event loop."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from conftest import TS, assert_got_nothing, bearer, session_cookie

NAMESPACES = ["/ws/lockers", "/ws/help", "/ws/events"]
TOKEN = "tok-123"


# -- helpers ---------------------------------------------------------------------


class Answer:
    """An HTTP response read to the end: code, raw body, parsed JSON, headers."""

    def __init__(self, code: int, raw: bytes, headers):
        self.code = code
        self.raw = raw
        self.headers = headers

    @property
    def json(self):
        return json.loads(self.raw)


async def get(server, path: str, headers: dict | None = None) -> Answer:
    response = await treq.get(server.http(path), headers=headers or {}, persistent=False)
    return Answer(response.code, await treq.content(response), response.headers)


async def post(server, path: str, body=None, headers: dict | None = None, raw: bytes | None = None) -> Answer:
    data = raw if raw is not None else json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", **(headers or {})}
    response = await treq.post(server.http(path), data=data, headers=headers, persistent=False)
    return Answer(response.code, await treq.content(response), response.headers)


def broadcast(server, body=None, headers=None, raw=None):
    return post(server, "/api/websocket/broadcast", body, headers, raw)


def error_body(status: int, error: str, message: str) -> dict:
    return {"statusCode": status, "error": error, "message": message}


@pytest_twisted.async_fixture
async def tokened(start_server):
    """A server with one configured API token."""
    return await start_server({"auth.api_tokens": [TOKEN]})


# -- GET /api/websocket/status -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_has_the_contract_keys_in_order(server):
    answer = await get(server, "/api/websocket/status")
    assert answer.code == 200
    assert answer.headers.getRawHeaders("content-type") == ["application/json"]
    body = answer.json
    assert list(body)[:5] == ["status", "namespaces", "total_connections", "latency_metrics", "timestamp"]
    assert body["status"] == "active"
    assert body["namespaces"] == {path: 0 for path in NAMESPACES}
    assert list(body["namespaces"]) == NAMESPACES
    assert body["total_connections"] == 0
    assert list(body["latency_metrics"]) == ["median", "p95", "p99", "connection_count"]
    assert body["latency_metrics"] == {"median": 0, "p95": 0, "p99": 0, "connection_count": 0}
    assert TS.match(body["timestamp"])


@pytest_twisted.ensureDeferred
async def test_status_counts_follow_real_connections(server):
    session_id = await server.session()
    lockers_1 = await server.join("/ws/lockers", session_id)
    lockers_1_id = lockers_1.connection_id
    lockers_2 = await server.join("/ws/lockers", session_id)
    help_1 = await server.join("/ws/help", session_id)

    body = (await get(server, "/api/websocket/status")).json
    assert body["namespaces"] == {"/ws/lockers": 2, "/ws/help": 1, "/ws/events": 0}
    assert body["total_connections"] == 3
    assert body["latency_metrics"]["connection_count"] == 3

    gone = server.hub.namespaces["/ws/lockers"].connections[lockers_1_id].closed
    await lockers_1.close()
    await gone  # the server has taken it out of the hub

    body = (await get(server, "/api/websocket/status")).json
    assert body["namespaces"] == {"/ws/lockers": 1, "/ws/help": 1, "/ws/events": 0}
    assert body["total_connections"] == 2
    assert body["latency_metrics"]["connection_count"] == 2
    await lockers_2.close()
    await help_1.close()


@pytest_twisted.ensureDeferred
async def test_status_latency_is_measured_from_broadcasts_to_clients(tokened):
    server = tokened
    before = (await get(server, "/api/websocket/status")).json["latency_metrics"]
    assert before["median"] == 0  # nothing delivered yet: an empty window

    session_id = await server.session()
    clients = [await server.join("/ws/lockers", session_id) for _ in range(3)]
    for n in range(5):
        answer = await broadcast(server, {"namespace": "/ws/lockers", "event": "tick", "data": {"n": n}}, bearer(TOKEN))
        assert answer.code == 200 and answer.json["delivered"] == 3
    for client in clients:
        for n in range(5):
            assert (await client.recv())["data"] == {"n": n}

    metrics = (await get(server, "/api/websocket/status")).json["latency_metrics"]
    assert metrics["median"] > 0
    assert metrics["median"] <= metrics["p95"] <= metrics["p99"]
    assert metrics["p99"] < 5000  # milliseconds of one local delivery, not seconds or a clock
    assert metrics["connection_count"] == 3
    for client in clients:
        await client.close()


@pytest.mark.slow  # ~10 s: 1,000 broadcasts
@pytest_twisted.ensureDeferred
async def test_status_latency_window_keeps_only_the_last_1000_deliveries(server):
    session_id = await server.session()
    client = await server.join("/ws/lockers", session_id)
    # 20 old deliveries that took a minute each (2% of a full window, so they are p99),
    # then real deliveries: the 1000-sample window holds them until 1000 newer ones came.
    for _ in range(20):
        server.hub.latency.record(60_000.0)
    for n in range(980):
        await server.service.events.broadcast("/ws/lockers", "tick", {"n": n})
    assert (await get(server, "/api/websocket/status")).json["latency_metrics"]["p99"] == 60_000.0

    for n in range(980, 1000):
        await server.service.events.broadcast("/ws/lockers", "tick", {"n": n})
    metrics = (await get(server, "/api/websocket/status")).json["latency_metrics"]
    assert 0 < metrics["p99"] < 60_000.0  # the 20 old samples are out of the window
    assert metrics["median"] > 0
    await client.close()


# -- POST /api/websocket/broadcast: delivery ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_with_api_token_reaches_every_client_of_the_namespace(tokened):
    server = tokened
    session_id = await server.session(role="staff")
    lockers = [await server.join("/ws/lockers", session_id) for _ in range(2)]
    help_client = await server.join("/ws/help", session_id)

    answer = await broadcast(
        server, {"namespace": "/ws/lockers", "event": "maintenance", "data": {"window": "tonight"}}, bearer(TOKEN)
    )
    assert answer.code == 200
    body = answer.json
    assert list(body) == ["success", "message", "delivered", "timestamp"]
    assert body["success"] is True
    assert body["message"] == "Broadcast sent to /ws/lockers"
    assert body["delivered"] == 2
    assert TS.match(body["timestamp"])

    for client in lockers:
        message = await client.recv()
        assert list(message) == ["type", "data", "timestamp", "namespace"]
        assert message["type"] == "maintenance"
        assert message["data"] == {"window": "tonight"}
        assert message["namespace"] == "/ws/lockers"
        assert TS.match(message["timestamp"])
    await assert_got_nothing(help_client)  # another namespace got nothing
    for client in [*lockers, help_client]:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_to_a_room_reaches_only_its_members(tokened):
    server = tokened
    session_id = await server.session(role="staff")
    member = await server.join("/ws/lockers", session_id)
    await member.send({"type": "join_room", "room": "kiosk-1"})
    assert (await member.recv())["type"] == "room_joined"
    outsider = await server.join("/ws/lockers", session_id)

    answer = await broadcast(
        server,
        {"namespace": "/ws/lockers", "event": "door", "data": {"locker": 7}, "room": "kiosk-1"},
        bearer(TOKEN),
    )
    assert answer.code == 200
    assert answer.json["message"] == "Broadcast sent to /ws/lockers/kiosk-1"
    assert answer.json["delivered"] == 1

    message = await member.recv()
    assert list(message) == ["type", "data", "timestamp", "namespace", "room"]
    assert message["type"] == "door" and message["data"] == {"locker": 7}
    assert message["namespace"] == "/ws/lockers" and message["room"] == "kiosk-1"
    await assert_got_nothing(outsider)
    await member.close()
    await outsider.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_with_admin_session_as_bearer_is_accepted(server):
    admin = await server.session(role="admin")
    client = await server.join("/ws/help", admin)
    answer = await broadcast(server, {"namespace": "/ws/help", "event": "hello", "data": {}}, bearer(admin))
    assert answer.code == 200
    assert answer.json["delivered"] == 1
    assert (await client.recv())["type"] == "hello"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_with_admin_session_cookie_is_accepted(server):
    admin = await server.session(role="admin")
    client = await server.join("/ws/events", admin)
    answer = await broadcast(
        server, {"namespace": "/ws/events", "event": "hello", "data": {}}, {"Cookie": f"sessionId={admin}"}
    )
    assert answer.code == 200
    assert answer.json["delivered"] == 1
    assert (await client.recv())["type"] == "hello"
    await client.close()


# -- POST /api/websocket/broadcast: refusals ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_without_credentials_is_401(tokened):
    answer = await broadcast(tokened, {"namespace": "/ws/lockers", "event": "x", "data": {}})
    assert answer.code == 401
    assert answer.json == error_body(401, "Unauthorized", "Authentication required")


@pytest_twisted.ensureDeferred
async def test_broadcast_with_unknown_token_is_401(tokened):
    answer = await broadcast(tokened, {"namespace": "/ws/lockers", "event": "x", "data": {}}, bearer("tok-999"))
    assert answer.code == 401
    assert answer.json == error_body(401, "Unauthorized", "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_broadcast_with_staff_session_is_403_and_delivers_nothing(server):
    staff = await server.session(role="staff")
    client = await server.join("/ws/lockers", staff)
    answer = await broadcast(server, {"namespace": "/ws/lockers", "event": "x", "data": {}}, bearer(staff))
    assert answer.code == 403
    assert list(answer.json) == ["statusCode", "error", "message"]
    assert answer.json["statusCode"] == 403 and answer.json["error"] == "Forbidden"
    await assert_got_nothing(client)
    await client.close()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"event": "x", "data": {}}, "body must have required property 'namespace'"),
        ({"namespace": "/ws/lockers", "data": {}}, "body must have required property 'event'"),
        ({"namespace": "/ws/lockers", "event": "x"}, "body must have required property 'data'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_broadcast_missing_property_is_400_naming_it(tokened, body, message):
    answer = await broadcast(tokened, body, bearer(TOKEN))
    assert answer.code == 400
    assert answer.json == error_body(400, "Bad Request", message)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"namespace": 1, "event": "x", "data": {}}, "body/namespace must be string"),
        ({"namespace": "/ws/lockers", "event": ["x"], "data": {}}, "body/event must be string"),
        ({"namespace": "/ws/lockers", "event": "x", "data": []}, "body/data must be object"),
        ({"namespace": "/ws/lockers", "event": "x", "data": "text"}, "body/data must be object"),
        ({"namespace": "/ws/lockers", "event": "x", "data": None}, "body/data must be object"),
        ({"namespace": "/ws/lockers", "event": "x", "data": {}, "room": 5}, "body/room must be string"),
        ({"namespace": True, "event": "x", "data": {}}, "body/namespace must be string"),
        ({"namespace": "/ws/lockers", "event": "", "data": {}}, "body/event must NOT have fewer than 1 characters"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_broadcast_wrong_type_is_400_naming_it(tokened, body, message):
    answer = await broadcast(tokened, body, bearer(TOKEN))
    assert answer.code == 400
    assert answer.json == error_body(400, "Bad Request", message)


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"namespace": "/ws/lockers",', b"NaN-ish"])
@pytest_twisted.ensureDeferred
async def test_broadcast_non_json_body_is_400(tokened, raw):
    answer = await broadcast(tokened, headers=bearer(TOKEN), raw=raw)
    assert answer.code == 400
    assert answer.json == error_body(400, "Bad Request", "body must be valid JSON")


@pytest.mark.parametrize("raw", [b'[{"namespace": "/ws/lockers", "event": "x", "data": {}}]', b'"text"', b"42", b"null"])
@pytest_twisted.ensureDeferred
async def test_broadcast_body_that_is_not_an_object_is_400(tokened, raw):
    answer = await broadcast(tokened, headers=bearer(TOKEN), raw=raw)
    assert answer.code == 400
    assert answer.json == error_body(400, "Bad Request", "body must be object")


@pytest_twisted.ensureDeferred
async def test_broadcast_to_unknown_namespace_is_404(tokened):
    answer = await broadcast(tokened, {"namespace": "/ws/nope", "event": "x", "data": {}}, bearer(TOKEN))
    assert answer.code == 404
    assert list(answer.json) == ["statusCode", "error", "message"]
    assert answer.json["statusCode"] == 404 and answer.json["error"] == "Not Found"


@pytest_twisted.ensureDeferred
async def test_broadcast_body_over_max_body_bytes_is_413(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "server.max_body_bytes": 200})
    session_id = await server.session()
    client = await server.join("/ws/lockers", session_id)
    small = {"namespace": "/ws/lockers", "event": "x", "data": {}}
    large = {"namespace": "/ws/lockers", "event": "x", "data": {"pad": "p" * 300}}

    assert (await broadcast(server, small, bearer(TOKEN))).code == 200  # under the limit: served
    assert (await client.recv())["type"] == "x"

    answer = await broadcast(server, large, bearer(TOKEN))
    assert answer.code == 413
    assert list(answer.json) == ["statusCode", "error", "message"]
    assert answer.json["statusCode"] == 413 and answer.json["error"] == "Payload Too Large"
    await assert_got_nothing(client)  # the oversized broadcast was not delivered
    await client.close()


# -- /healthz and unknown paths ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_healthz_is_200_ok(server):
    answer = await get(server, "/healthz")
    assert answer.code == 200
    assert answer.headers.getRawHeaders("content-type") == ["application/json"]
    assert answer.json["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_healthz_of_a_single_process_has_no_bus_check(server):
    answer = await get(server, "/healthz")
    assert answer.code == 200 and "redis_bus" not in answer.json.get("checks", {})


@pytest.mark.parametrize("path", ["/nope", "/api/websocket/nope", "/api/websocket/status/extra"])
@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404_json(server, path):
    answer = await get(server, path)
    assert answer.code == 404
    assert answer.headers.getRawHeaders("content-type") == ["application/json"]
    assert answer.json == error_body(404, "Not Found", "Not Found")


# -- session ids never come back -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_response_contains_a_session_id(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "server.max_body_bytes": 200})
    admin = await server.session(role="admin")
    staff = await server.session(role="staff")
    revoked = await server.session(role="admin")
    await server.service.sessions.revoke(revoked)
    client = await server.join("/ws/lockers", admin)
    body = {"namespace": "/ws/lockers", "event": "x", "data": {}}

    answers = [
        await get(server, f"/api/websocket/status?sessionId={admin}", bearer(admin)),
        await get(server, f"/api/websocket/health?sessionId={admin}"),
        await get(server, "/api/websocket/health", {"Cookie": f"sessionId={staff}"}),
        await get(server, "/api/websocket/health", bearer(revoked)),
        await get(server, f"/healthz?sessionId={admin}", bearer(admin)),
        await get(server, f"/nope?sessionId={admin}", bearer(admin)),
        await broadcast(server, body, bearer(admin)),
        await broadcast(server, body, {"Cookie": f"sessionId={admin}"}),
        await broadcast(server, {**body, "data": {"echo": "x"}}, bearer(staff)),
        await broadcast(server, body, bearer(revoked)),
        await broadcast(server, {"namespace": "/ws/lockers", "event": "x", "data": [admin]}, bearer(admin)),
        await broadcast(server, {"namespace": "/ws/lockers", "event": "x", "data": {}, "room": admin + "\n"}, bearer(admin)),
        await broadcast(server, headers=bearer(admin), raw=admin.encode()),
        await broadcast(server, {**body, "data": {"pad": "p" * 300}}, bearer(admin)),
    ]
    codes = [a.code for a in answers]
    assert codes == [200, 200, 200, 401, 200, 404, 200, 200, 403, 401, 400, 400, 400, 413]
    for answer in answers:
        for secret in (admin, staff, revoked):
            assert secret.encode() not in answer.raw, answer.raw
            for name, values in answer.headers.getAllRawHeaders():
                assert all(secret.encode() not in v for v in values), (name, values)
    await client.close()


# -- cross-site requests: a session cookie is sent with any site's form post -----------------------


BODY = {"namespace": "/ws/lockers", "event": "notice", "data": {}}


@pytest_twisted.ensureDeferred
async def test_cookie_authenticated_broadcast_that_is_not_json_is_403(server):
    admin = await server.session(role="admin")
    answer = await broadcast(server, BODY, {**session_cookie(admin), "Content-Type": "text/plain"})
    assert (answer.code, answer.json) == (403, error_body(
        403, "Forbidden", "A request authenticated by a cookie must send Content-Type: application/json"))


@pytest_twisted.ensureDeferred
async def test_cookie_authenticated_json_broadcast_is_accepted(server):
    admin = await server.session(role="admin")
    assert (await broadcast(server, BODY, session_cookie(admin))).code == 200


@pytest_twisted.ensureDeferred
async def test_bearer_authenticated_broadcast_needs_no_json_content_type(server):
    admin = await server.session(role="admin")
    assert (await broadcast(server, BODY, {**bearer(admin), "Content-Type": "text/plain"})).code == 200


@pytest_twisted.ensureDeferred
async def test_cookie_authenticated_broadcast_from_an_origin_outside_the_allow_list_is_403(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    admin = await server.session(role="admin")
    answer = await broadcast(server, BODY, {**session_cookie(admin), "Origin": "https://evil.example"})
    assert (answer.code, answer.json["message"]) == (403, "Origin not allowed")


@pytest_twisted.ensureDeferred
async def test_cookie_authenticated_broadcast_from_its_own_origin_is_accepted_with_an_allow_list(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    admin = await server.session(role="admin")
    answer = await broadcast(server, BODY, {**session_cookie(admin), "Origin": f"http://127.0.0.1:{server.port}"})
    assert answer.code == 200
