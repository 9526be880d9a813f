"""A batch of events over HTTP (a JSON array to POST /api/websocket/events): each item
answered on its own, stored ones delivered in the array's order, refusals of the whole
request, and what a store that cannot take an item answers for it."""

from __future__ import annotations

import asyncio
import json

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.logger import LogLevel
from conftest import aio, locker, until_pong, within
from logcheck import LogCapture

from eformws.core.wire import MAX_DEPTH
from eformws.http.batch import MAX_BATCH_ITEMS

TOKEN = "batch-token"
LOCKERS = "/ws/lockers"


def item(n: int = 12, **extra) -> dict:
    return {"type": "locker_state_changed", "data": locker(n), **extra}


async def post(server, body, token: str | None = TOKEN, headers: dict | None = None):
    """POST /api/websocket/events; (status, JSON body)."""
    sent = {b"Content-Type": [b"application/json"], **(headers or {})}
    if token is not None:
        sent[b"Authorization"] = [f"Bearer {token}".encode()]
    response = await treq.post(server.http("/api/websocket/events"), data=json.dumps(body).encode(), headers=sent,
                               persistent=False)
    return response.code, await treq.json_content(response)


async def stored_count(server) -> int:
    return (await server.service.event_store.stats())["total_events"]


@pytest_twisted.async_fixture
async def server(start_server):
    return await start_server({"auth.api_tokens": [TOKEN]})


async def client_of(server):
    return await server.join(LOCKERS, await server.session("bob", "staff"))


@pytest_twisted.ensureDeferred
async def test_a_batch_stores_every_item_and_answers_each_with_its_stored_event_in_order(server):
    code, body = await post(server, [item(1), item(2), item(3)])
    assert code == 200
    assert [r["statusCode"] for r in body["results"]] == [201, 201, 201]
    assert [r["replayed"] for r in body["results"]] == [False, False, False]
    assert [r["event"]["data"]["lockerId"] for r in body["results"]] == ["kiosk-1:1", "kiosk-1:2", "kiosk-1:3"]
    seqs = [int(r["event"]["seq"]) for r in body["results"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert await stored_count(server) == 3


@pytest_twisted.ensureDeferred
async def test_a_batch_is_delivered_to_clients_in_the_arrays_order_as_stored(server):
    client = await client_of(server)
    code, body = await post(server, [item(n) for n in range(1, 21)])
    assert code == 200
    assert await until_pong(client) == [r["event"] for r in body["results"]]


@pytest_twisted.ensureDeferred
async def test_an_item_refused_by_its_schema_is_answered_400_with_its_field_and_the_others_are_stored(server):
    bad = {"type": "locker_state_changed", "data": {**locker(2), "oldState": "shut"}}
    code, body = await post(server, [item(1), bad, item(3)])
    assert code == 200
    first, refused, third = body["results"]
    assert (first["statusCode"], third["statusCode"]) == (201, 201)
    assert refused == {"statusCode": 400, "error": "Bad Request", "field": "data.oldState",
                       "message": "data.oldState must be one of closed, open, reserved, maintenance, error, got 'shut'"}
    assert await stored_count(server) == 2


@pytest_twisted.ensureDeferred
async def test_malformed_items_are_each_answered_400_naming_their_place(server):
    items = [7, {"data": locker()}, {"type": 5, "data": {}}, {"type": "system_status", "data": []},
             item(1, idempotency_key=""), item(1, idempotency_key=3)]
    code, body = await post(server, items)
    assert code == 200
    assert [(r["statusCode"], r["message"]) for r in body["results"]] == [
        (400, "body/0 must be object"),
        (400, "body/1 must have required property 'type'"),
        (400, "body/2/type must be string"),
        (400, "body/3/data must be object"),
        (400, "body/4/idempotency_key must be 1 to 255 visible ASCII characters"),
        (400, "body/5/idempotency_key must be string"),
    ]
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_idempotency_keys_of_a_batch_answer_a_repeat_with_the_first_event_and_a_conflict_with_409(server):
    other = {"type": "locker_state_changed", "data": locker(9)}
    code, body = await post(server, [item(1, idempotency_key="k-1"), item(1, idempotency_key="k-1"),
                                     {**other, "idempotency_key": "k-1"}])
    assert code == 200
    first, repeat, conflict = body["results"]
    assert (first["statusCode"], first["replayed"]) == (201, False)
    assert (repeat["statusCode"], repeat["replayed"], repeat["event"]) == (201, True, first["event"])
    assert conflict == {"statusCode": 409, "error": "Conflict",
                        "message": "Idempotency-Key was already used for a different event"}
    code, again = await post(server, [item(1, idempotency_key="k-1")])
    assert (again["results"][0]["replayed"], again["results"][0]["event"]) == (True, first["event"])
    assert await stored_count(server) == 1


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_header_with_a_batch_is_refused_and_nothing_is_stored(server):
    code, body = await post(server, [item(1)], headers={b"Idempotency-Key": [b"k-2"]})
    assert (code, body["message"]) == (
        400, "Idempotency-Key applies to one event: give each item of a batch its own idempotency_key")
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_an_empty_batch_is_refused(server):
    assert await post(server, []) == (400, {"statusCode": 400, "error": "Bad Request",
                                            "message": "body must NOT have fewer than 1 items"})


@pytest_twisted.ensureDeferred
async def test_a_batch_over_the_item_limit_is_refused_whole_and_nothing_is_stored(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN], "server.max_body_bytes": 1 << 20})
    code, body = await post(server, [{"type": "x", "data": {}}] * (MAX_BATCH_ITEMS + 1))
    assert (code, body["message"]) == (400, f"body must NOT have more than {MAX_BATCH_ITEMS} items")
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_a_body_that_is_neither_object_nor_array_is_refused(server):
    assert (await post(server, "events"))[1]["message"] == "body must be object or array"


@pytest_twisted.ensureDeferred
async def test_a_batch_needs_the_credentials_of_one_event(server):
    assert (await post(server, [item(1)], token=None))[0] == 401
    staff = await server.session("bob", "staff")
    assert (await post(server, [item(1)], token=staff))[0] == 403
    assert await stored_count(server) == 0


@pytest_twisted.ensureDeferred
async def test_an_item_whose_data_nests_too_deep_is_refused_alone(server):
    deep: dict = {}
    inner = deep
    for _ in range(MAX_DEPTH + 1):
        inner["x"] = {}
        inner = inner["x"]
    too_deep = {"type": "locker_state_changed", "data": {**locker(2), "metadata": deep}}
    code, body = await post(server, [item(1), too_deep])
    assert code == 200
    assert body["results"][0]["statusCode"] == 201
    assert body["results"][1]["statusCode"] == 400
    assert body["results"][1]["message"] == "data must not nest arrays and objects more than 128 levels deep"


@pytest_twisted.ensureDeferred
async def test_items_redis_does_not_confirm_in_time_are_answered_503_and_the_invalid_one_400(
        start_server, own_redis, redis_admin, redis_prefix):
    server = await start_server({"auth.api_tokens": [TOKEN], "redis.url": own_redis.url,
                                 "redis.prefix": redis_prefix, "redis.emit_timeout": 0.3})
    await redis_admin.command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        code, body = await within(defer.ensureDeferred(post(server, [item(1), {"type": "nope", "data": {}}, item(2)])), 10.0)
    finally:
        await redis_admin.command("CLIENT", "UNPAUSE")
    assert code == 200
    assert [r["statusCode"] for r in body["results"]] == [503, 400, 503]
    assert body["results"][0]["message"] == ("redis did not confirm the write in time: it may have been stored "
                                             "(then it is delivered); retry with the same Idempotency-Key to know")


@pytest_twisted.ensureDeferred
async def test_a_batch_whose_client_hangs_up_is_stored_and_delivered_whole_and_logs_no_error(server):
    client = await client_of(server)
    items = [item(n) for n in range(200)]
    body = json.dumps(items).encode()
    with LogCapture() as capture:
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", server.port))
        writer.write(b"POST /api/websocket/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await aio(writer.drain())
        writer.close()  # gone before any answer
        got = [await client.recv() for _ in items]
    assert [m["data"]["lockerId"] for m in got] == [f"kiosk-1:{n}" for n in range(200)]
    assert await stored_count(server) == 200
    assert [e for e in capture.events if e.get("log_level") in (LogLevel.error, LogLevel.critical)] == []
