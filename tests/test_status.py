"""GET /api/websocket/status against many rooms (issue 13): the public answer lists at most
`server.status_room_limit` rooms per namespace (the largest) and counts them all, `?rooms=all`
lists every room for those who may broadcast, and a costly answer is built at most once per
second. `eform.status` over WAMP is the same public answer. Real servers on port 0."""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet.defer import Deferred, succeed

from eformws.http.api import Snapshot

HELP = "/ws/help"
TOKEN = "tok-status"
MANY = {  # rooms made fast: no rate limit in the way, and one connection may hold them all
    "websocket.rate_limit": 1_000_000.0,
    "websocket.rate_burst": 1_000_000,
    "websocket.max_rooms": 2000,
    "auth.api_tokens": [TOKEN],
}


async def get(server, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    response = await treq.get(server.http(path), headers=headers or {}, persistent=False)
    raw = await treq.content(response)
    return response.code, json.loads(raw), raw


async def join_rooms(client, rooms) -> None:
    for room in rooms:
        await client.send({"type": "join_room", "room": room})
    for _ in rooms:
        assert (await client.recv())["type"] == "room_joined"


async def sized_rooms(server) -> list:
    """In /ws/help: help_requests (the default room) and r6 with 3 members, r5 with 2, r1–r4
    with 1: seven rooms, of which the three largest are help_requests, r6, r5."""
    session_id = await server.session(role="staff")
    clients = [await server.join(HELP, session_id) for _ in range(3)]
    await join_rooms(clients[0], ["r1", "r2", "r3", "r4", "r5", "r6"])
    await join_rooms(clients[1], ["r5", "r6"])
    await join_rooms(clients[2], ["r6"])
    return clients


async def close_all(clients) -> None:
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_status_lists_the_largest_rooms_up_to_the_limit_and_counts_every_room(start_server):
    server = await start_server({**MANY, "server.status_room_limit": 3})
    clients = await sized_rooms(server)
    code, body, _ = await get(server, "/api/websocket/status")
    assert code == 200
    assert body["rooms"][HELP] == {"help_requests": 3, "r6": 3, "r5": 2}
    assert body["room_counts"] == {"/ws/lockers": 0, HELP: 7, "/ws/events": 0}
    assert body["rooms_truncated"] is True
    assert body["rooms"]["/ws/lockers"] == {}
    assert list(body) == ["status", "namespaces", "total_connections", "latency_metrics", "timestamp",
                          "rooms", "room_counts", "rooms_truncated", "endpoints"]
    await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_status_within_the_limit_lists_every_room_and_is_not_truncated(start_server):
    server = await start_server({**MANY, "server.status_room_limit": 7})
    clients = await sized_rooms(server)
    _, body, _ = await get(server, "/api/websocket/status")
    assert body["rooms"][HELP] == {"help_requests": 3, "r1": 1, "r2": 1, "r3": 1, "r4": 1, "r5": 2, "r6": 3}
    assert body["room_counts"][HELP] == 7
    assert body["rooms_truncated"] is False
    await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_status_of_a_thousand_rooms_lists_a_hundred_and_stays_small(start_server):
    server = await start_server(MANY)  # the default limit: 100
    session_id = await server.session(role="staff")
    client = await server.join(HELP, session_id)
    await join_rooms(client, [f"room-{n:04d}-" + "x" * 100 for n in range(1000)])
    _, public, raw_public = await get(server, "/api/websocket/status")
    _, full, raw_full = await get(server, "/api/websocket/status?rooms=all", {"Authorization": f"Bearer {TOKEN}"})
    assert len(public["rooms"][HELP]) == 100 and public["room_counts"][HELP] == 1001
    assert len(full["rooms"][HELP]) == 1001 and full["rooms_truncated"] is False
    assert len(raw_public) < 16_000 < 100_000 < len(raw_full)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_status_rooms_all_lists_every_room_for_an_api_token(start_server):
    server = await start_server({**MANY, "server.status_room_limit": 3})
    clients = await sized_rooms(server)
    await get(server, "/api/websocket/status")  # the public answer is built (and kept) first
    code, body, _ = await get(server, "/api/websocket/status?rooms=all", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200
    assert body["rooms"][HELP] == {"help_requests": 3, "r1": 1, "r2": 1, "r3": 1, "r4": 1, "r5": 2, "r6": 3}
    assert body["room_counts"][HELP] == 7 and body["rooms_truncated"] is False
    await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_status_rooms_all_lists_every_room_for_an_admin_session_cookie(start_server):
    server = await start_server({**MANY, "server.status_room_limit": 3})
    clients = await sized_rooms(server)
    admin = await server.session(role="admin")
    code, body, _ = await get(server, "/api/websocket/status?rooms=all", {"Cookie": f"sessionId={admin}"})
    assert code == 200, body  # a read: no Content-Type or Origin asked of a cookie
    assert len(body["rooms"][HELP]) == 7
    await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_status_rooms_all_without_credentials_is_refused_401(start_server):
    server = await start_server(MANY)
    code, body, _ = await get(server, "/api/websocket/status?rooms=all")
    assert code == 401
    assert body == {"statusCode": 401, "error": "Unauthorized", "message": "Authentication required"}


@pytest_twisted.ensureDeferred
async def test_status_rooms_all_for_a_staff_session_is_refused_403(start_server):
    server = await start_server(MANY)
    staff = await server.session(role="staff")
    code, body, _ = await get(server, "/api/websocket/status?rooms=all", {"Authorization": f"Bearer {staff}"})
    assert code == 403
    assert body == {"statusCode": 403, "error": "Forbidden", "message": "This session may not do that"}


@pytest_twisted.ensureDeferred
async def test_status_rooms_with_another_value_is_refused_400(start_server):
    server = await start_server(MANY)
    code, body, _ = await get(server, "/api/websocket/status?rooms=some", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 400
    assert body == {"statusCode": 400, "error": "Bad Request", "message": "rooms must be all, or not given"}


@pytest_twisted.ensureDeferred
async def test_status_of_many_rooms_is_answered_again_within_a_second(start_server):
    server = await start_server({**MANY, "server.status_room_limit": 3})
    clients = await sized_rooms(server)
    _, first, raw_first = await get(server, "/api/websocket/status")
    await join_rooms(clients[0], ["r7"])  # a change within the second ...
    _, second, raw_second = await get(server, "/api/websocket/status")
    assert second["timestamp"] == first["timestamp"]
    assert raw_second == raw_first  # ... is not seen: the same answer, not built again
    assert second["room_counts"][HELP] == 7
    await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_status_of_few_rooms_is_built_for_each_call(start_server):
    server = await start_server(MANY)
    session_id = await server.session(role="staff")
    client = await server.join(HELP, session_id)
    _, first, _ = await get(server, "/api/websocket/status")
    await join_rooms(client, ["r1"])
    _, second, _ = await get(server, "/api/websocket/status")
    assert first["room_counts"][HELP] == 1 and second["room_counts"][HELP] == 2
    assert second["rooms"][HELP] == {"help_requests": 1, "r1": 1}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_eform_status_over_wamp_is_the_public_answer(start_server):
    from conftest import within
    from wamp_peer import join

    server = await start_server({**MANY, "server.status_room_limit": 3})
    clients = await sized_rooms(server)
    peer = await join(server, role="admin")
    status = await within(peer.call("eform.status"))
    assert status["rooms"][HELP] == {"help_requests": 3, "r6": 3, "r5": 2}
    assert status["room_counts"][HELP] == 7 and status["rooms_truncated"] is True
    peer.leave()
    await close_all(clients)


# -- Snapshot: the cache under the costly answers -------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_snapshot_is_built_again_only_after_max_age():
    clock, builds = Clock(), []
    snapshot = Snapshot(lambda: succeed(builds.append(clock.now) or len(builds)), 1.0, clock)
    answers = []
    for at in (100.0, 100.5, 100.99, 101.0, 101.5, 102.2):
        clock.now = at
        snapshot.get().addCallback(answers.append)
    assert answers == [1, 1, 1, 2, 2, 3]
    assert builds == [100.0, 101.0, 102.2]


def test_callers_during_a_build_share_it():
    clock, pending = Clock(), []

    def build():
        pending.append(Deferred())
        return pending[-1]

    snapshot = Snapshot(build, 1.0, clock)
    answers = []
    for _ in range(5):
        snapshot.get().addCallback(answers.append)
    assert len(pending) == 1 and answers == []
    pending[0].callback("built")
    assert answers == ["built"] * 5


def test_a_failed_build_is_not_kept():
    clock, outcomes = Clock(), iter([ValueError("first"), "second"])

    def build():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    snapshot = Snapshot(build, 1.0, clock)
    failures = []
    snapshot.get().addErrback(failures.append)
    assert failures[0].check(ValueError)
    answers = []
    snapshot.get().addCallback(answers.append)
    assert answers == ["second"]
