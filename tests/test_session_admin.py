"""The session's own view and session administration over HTTP (docs/protocol.md section 7):
`GET /api/websocket/session` for any session; `GET`/`POST /api/websocket/sessions` and
`DELETE /api/websocket/sessions/<ref>` for API tokens and roles in
`auth.session_admin_roles`. A revoke closes this process's connections of that session at
once with 1008 `Session revoked`. Against an in-process server, SQLite and Redis stores."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
import pytest_twisted
import treq
from conftest import TS, aio, bearer, refused, session_cookie, within
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from eformws.sessions.sqlite import REF_LENGTH, id_hash

LOCKERS = "/ws/lockers"
REF = re.compile(rf"^[0-9a-f]{{{REF_LENGTH}}}$")
TOKEN = "tok-sessions"
SLOW_RECHECK = {"sessions.recheck_interval": 3600.0}  # only a revoke's own check can close anything


class Answer:
    def __init__(self, code: int, raw: bytes):
        self.code = code
        self.raw = raw

    @property
    def json(self):
        return json.loads(self.raw)


async def call(server, method: str, path: str, body=None, headers: dict | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", **(headers or {})}
    response = await treq.request(method, server.http(path), data=data, headers=headers, persistent=False)
    return Answer(response.code, await treq.content(response))


def whoami(server, session_id: str) -> Answer:
    return call(server, "GET", "/api/websocket/session", headers=bearer(session_id))


def listed(server, credential: str) -> Answer:
    return call(server, "GET", "/api/websocket/sessions", headers=bearer(credential))


def create(server, credential: str, body: dict, headers: dict | None = None) -> Answer:
    return call(server, "POST", "/api/websocket/sessions", body, {**bearer(credential), **(headers or {})})


def revoke(server, credential: str, ref: str, headers: dict | None = None) -> Answer:
    return call(server, "DELETE", f"/api/websocket/sessions/{ref}", headers={**bearer(credential), **(headers or {})})


def ref_of(session_id: str) -> str:
    return id_hash(session_id)[:REF_LENGTH]


def error(status: int, reason: str, message: str, **extra) -> dict:
    return {"statusCode": status, "error": reason, "message": message, **extra}


class Logged:
    """The log events emitted while in the `with` block."""

    def __enter__(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.events.append)

    def about(self, word: str) -> list[dict]:
        return [e for e in self.events if word in (e.get("log_format") or "") and "ref" in e]


@pytest_twisted.async_fixture
async def tokened(start_server):
    return await start_server({"auth.api_tokens": [TOKEN], **SLOW_RECHECK})


# -- GET /api/websocket/session ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_whoami_tells_an_admin_who_it_is_and_that_it_may_do_everything(server):
    before = time.time()
    answer = await whoami(server, await server.session("alice", "admin", ttl=3600))
    assert answer.code == 200
    body = answer.json
    assert list(body) == ["user_id", "role", "kiosk_id", "expires_at", "may"]
    assert (body["user_id"], body["role"], body["kiosk_id"]) == ("alice", "admin", None)
    assert TS.match(body["expires_at"])
    assert body["expires_at"][:13] == time.strftime("%Y-%m-%dT%H", time.gmtime(before + 3600))
    assert body["may"] == {"broadcast": True, "emit": True, "manage_sessions": True, "see_sensitive": True}


@pytest_twisted.ensureDeferred
async def test_whoami_tells_staff_it_may_only_see_sensitive_fields(server):
    body = (await whoami(server, await server.session("bob", "staff"))).json
    assert (body["user_id"], body["role"], body["kiosk_id"]) == ("bob", "staff", None)
    assert body["may"] == {"broadcast": False, "emit": False, "manage_sessions": False, "see_sensitive": True}


@pytest_twisted.ensureDeferred
async def test_whoami_tells_a_kiosk_its_kiosk_and_that_it_may_do_nothing_more(server):
    body = (await whoami(server, await server.session("k9", "kiosk", kiosk="kiosk-9"))).json
    assert (body["user_id"], body["role"], body["kiosk_id"]) == ("k9", "kiosk", "kiosk-9")
    assert body["may"] == {"broadcast": False, "emit": False, "manage_sessions": False, "see_sensitive": False}


@pytest_twisted.ensureDeferred
async def test_whoami_follows_the_configured_roles(start_server):
    server = await start_server({"auth.session_admin_roles": ["admin", "staff"], "auth.broadcast_roles": ["staff"]})
    body = (await whoami(server, await server.session("bob", "staff"))).json
    assert body["may"] == {"broadcast": True, "emit": True, "manage_sessions": True, "see_sensitive": True}


@pytest_twisted.ensureDeferred
async def test_whoami_never_shows_the_session_id(server):
    session_id = await server.session()
    for headers in (bearer(session_id), session_cookie(session_id)):
        answer = await call(server, "GET", "/api/websocket/session", headers=headers)
        assert answer.code == 200 and session_id.encode() not in answer.raw


@pytest_twisted.ensureDeferred
async def test_whoami_without_a_valid_session_is_401_and_an_api_token_is_not_one(tokened):
    assert (await call(tokened, "GET", "/api/websocket/session")).json == error(
        401, "Unauthorized", "Authentication required")
    for credential in ("not-a-session", TOKEN):
        answer = await whoami(tokened, credential)
        assert (answer.code, answer.json) == (401, error(401, "Unauthorized", "Authentication failed"))


# -- GET /api/websocket/sessions -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_shows_references_oldest_first_never_ids(server):
    admin = await server.session("alice", "admin")
    kiosk = await server.session("k1", "kiosk", kiosk="kiosk-1")
    answer = await listed(server, admin)
    assert answer.code == 200
    sessions = answer.json["sessions"]
    assert [(s["ref"], s["user_id"], s["role"], s["kiosk_id"]) for s in sessions] == [
        (ref_of(admin), "alice", "admin", None), (ref_of(kiosk), "k1", "kiosk", "kiosk-1")]
    for session in sessions:
        assert list(session) == ["ref", "user_id", "role", "kiosk_id", "created_at", "expires_at", "state"]
        assert REF.match(session["ref"]) and TS.match(session["created_at"]) and TS.match(session["expires_at"])
    assert admin.encode() not in answer.raw and kiosk.encode() not in answer.raw


@pytest_twisted.ensureDeferred
async def test_list_tells_live_expired_and_revoked_sessions_apart(server):
    admin = await server.session("alice", "admin")
    await server.session("old", "staff", ttl=0.05)
    revoked = await server.session("gone", "staff")
    await server.service.sessions.revoke(revoked)
    await aio(asyncio.sleep(0.1))
    states = {s["user_id"]: s["state"] for s in (await listed(server, admin)).json["sessions"]}
    assert states == {"alice": "live", "old": "expired", "gone": "revoked"}


# -- POST /api/websocket/sessions ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_answers_the_new_id_once_and_that_id_authenticates(server):
    admin = await server.session("alice", "admin")
    answer = await create(server, admin, {"user_id": "k9", "role": "kiosk", "kiosk_id": "kiosk-9", "ttl": 600})
    assert answer.code == 201
    body = answer.json
    assert list(body) == ["id", "ref", "user_id", "role", "kiosk_id", "expires_at"]
    assert (body["ref"], body["user_id"], body["role"], body["kiosk_id"]) == (ref_of(body["id"]), "k9", "kiosk", "kiosk-9")
    me = (await whoami(server, body["id"])).json
    assert (me["user_id"], me["kiosk_id"], me["expires_at"]) == ("k9", "kiosk-9", body["expires_at"])
    assert body["id"].encode() not in (await listed(server, admin)).raw


@pytest_twisted.ensureDeferred
async def test_create_without_ttl_lasts_sessions_default_ttl(start_server):
    server = await start_server({"sessions.default_ttl": 7200})
    before = time.time()
    body = (await create(server, await server.session(), {"user_id": "bob", "role": "staff"})).json
    assert body["expires_at"][:13] == time.strftime("%Y-%m-%dT%H", time.gmtime(before + 7200))


@pytest_twisted.ensureDeferred
async def test_create_of_a_kiosk_session_without_kiosk_id_is_400_naming_body_kiosk_id(server):
    answer = await create(server, await server.session(), {"user_id": "k9", "role": "kiosk"})
    assert answer.code == 400
    assert answer.json == error(400, "Bad Request", "a kiosk session needs body/kiosk_id (its own kiosk's room is the "
                                "one room it may join besides the default)", field="body/kiosk_id")


@pytest_twisted.ensureDeferred
async def test_create_refuses_each_bad_field_with_400_naming_it(server):
    admin = await server.session()
    good = {"user_id": "bob", "role": "staff"}
    cases = [
        ({"role": "staff"}, "body/user_id", "body must have required property 'user_id'"),
        ({**good, "user_id": ""}, "body/user_id", "body/user_id must not be empty"),
        ({**good, "user_id": 7}, "body/user_id", "body/user_id must be string"),
        ({**good, "role": "root"}, "body/role", "body/role must be one of admin, staff, kiosk, got 'root'"),
        ({**good, "kiosk_id": ""}, "body/kiosk_id", "body/kiosk_id must not be empty"),
        ({**good, "kiosk_id": None}, "body/kiosk_id", "body/kiosk_id must be string"),
        ({**good, "ttl": 0}, "body/ttl", "body/ttl must be a number of seconds above 0 and at most 315360000, got 0"),
        ({**good, "ttl": 315360001}, "body/ttl", None),
        ({**good, "ttl": "3600"}, "body/ttl", "body/ttl must be number"),
        ({**good, "ttl": True}, "body/ttl", "body/ttl must be number"),
    ]
    for body, field, message in cases:
        answer = await create(server, admin, body)
        assert (answer.code, answer.json["field"]) == (400, field), (body, answer.json)
        assert message is None or answer.json["message"] == message, answer.json
    assert [s["user_id"] for s in (await listed(server, admin)).json["sessions"]] == ["alice"]  # nothing created


@pytest_twisted.ensureDeferred
async def test_create_refuses_values_no_store_can_keep_with_400(server):
    admin = await server.session()
    for raw, field in ((b'{"user_id":"a\\ud800","role":"staff"}', "body/user_id"),
                       (b'{"user_id":"a","role":"staff","ttl":1e400}', "body/ttl"),
                       (b'{"user_id":"a","role":"staff","ttl":NaN}', "body/ttl")):
        response = await treq.post(server.http("/api/websocket/sessions"), data=raw, persistent=False,
                                   headers={"Content-Type": "application/json", **bearer(admin)})
        body = json.loads(await treq.content(response))
        assert (response.code, body["field"]) == (400, field), body


@pytest_twisted.ensureDeferred
async def test_create_refuses_user_and_kiosk_ids_a_log_or_a_room_could_not_carry_with_400(server):
    admin = await server.session()
    kiosk = {"user_id": "k9", "role": "kiosk"}
    cases = [
        ({"user_id": "u" * 129, "role": "staff"}, "body/user_id", "body/user_id must be at most 128 characters"),
        ({"user_id": "bob\nadmin revoked everything", "role": "staff"}, "body/user_id",
         "body/user_id must not contain control characters"),
        ({"user_id": "bob\x1b[31m", "role": "staff"}, "body/user_id", "body/user_id must not contain control characters"),
        ({"user_id": "   ", "role": "staff"}, "body/user_id", "body/user_id must not be blank"),
        ({**kiosk, "kiosk_id": "k" * 129}, "body/kiosk_id", "body/kiosk_id must be at most 128 characters"),
        ({**kiosk, "kiosk_id": "kiosk\u00001"}, "body/kiosk_id", "body/kiosk_id must not contain control characters"),
    ]
    for body, field, message in cases:
        answer = await create(server, admin, body)
        assert (answer.code, answer.json["field"], answer.json["message"]) == (400, field, message), body
    assert (await create(server, admin, {"user_id": "u" * 128, "role": "staff"})).code == 201


# -- who may ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_staff_may_not_list_create_or_revoke_sessions(server):
    staff = await server.session("bob", "staff")
    admin = await server.session("alice", "admin")
    for answer in (await listed(server, staff), await create(server, staff, {"user_id": "x", "role": "admin"}),
                   await revoke(server, staff, ref_of(admin))):
        assert (answer.code, answer.json) == (403, error(403, "Forbidden", "This session may not do that"))
    assert (await whoami(server, admin)).code == 200


@pytest_twisted.ensureDeferred
async def test_an_api_token_may_list_create_and_revoke_sessions(tokened):
    created = await create(tokened, TOKEN, {"user_id": "bob", "role": "staff"})
    assert created.code == 201
    assert [s["ref"] for s in (await listed(tokened, TOKEN)).json["sessions"]] == [created.json["ref"]]
    assert (await revoke(tokened, TOKEN, created.json["ref"])).json == {"revoked": 1}


@pytest_twisted.ensureDeferred
async def test_session_admin_roles_decide_which_sessions_may_manage_sessions(start_server):
    server = await start_server({"auth.session_admin_roles": ["staff"]})
    assert (await listed(server, await server.session("bob", "staff"))).code == 200
    assert (await listed(server, await server.session("alice", "admin"))).code == 403


@pytest_twisted.ensureDeferred
async def test_a_cookie_authenticated_create_that_is_not_json_is_refused_403(server):
    admin = await server.session()
    response = await treq.post(server.http("/api/websocket/sessions"), persistent=False, headers=session_cookie(admin),
                               data=b"user_id=mallory&role=admin")
    body = json.loads(await treq.content(response))
    assert (response.code, body) == (403, error(
        403, "Forbidden", "A request authenticated by a cookie must send Content-Type: application/json"))
    assert [s["user_id"] for s in (await listed(server, admin)).json["sessions"]] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_a_cookie_authenticated_create_from_another_origin_is_refused_403(start_server):
    server = await start_server({"server.allowed_origins": ["https://panel.example"]})
    admin = await server.session()
    answer = await call(server, "POST", "/api/websocket/sessions", {"user_id": "m", "role": "admin"},
                        {**session_cookie(admin), "Origin": "https://evil.example"})
    assert (answer.code, answer.json["message"]) == (403, "Origin not allowed")


@pytest_twisted.ensureDeferred
async def test_a_cookie_authenticated_revoke_without_json_content_type_is_refused_403(server):
    admin = await server.session()
    victim = await server.session("bob", "staff")
    response = await treq.delete(server.http(f"/api/websocket/sessions/{ref_of(victim)}"), headers=session_cookie(admin),
                                 persistent=False)
    assert response.code == 403
    assert (await whoami(server, victim)).code == 200


@pytest_twisted.ensureDeferred
async def test_a_cookie_authenticated_json_revoke_is_accepted(server):
    admin = await server.session()
    victim = await server.session("bob", "staff")
    answer = await call(server, "DELETE", f"/api/websocket/sessions/{ref_of(victim)}", headers=session_cookie(admin))
    assert (answer.code, answer.json) == (200, {"revoked": 1})


# -- DELETE /api/websocket/sessions/<ref> ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_revoke_closes_this_process_websocket_of_that_session_at_once_with_1008_session_revoked(start_server):
    server = await start_server(SLOW_RECHECK)
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    client = await server.join(LOCKERS, victim)
    bystander = await server.join(LOCKERS, admin)
    assert (await revoke(server, admin, ref_of(victim))).json == {"revoked": 1}
    assert await client.closed(timeout=2) == (1008, "Session revoked")
    server.service.events.broadcast(LOCKERS, "still-here", {})
    assert (await bystander.recv())["type"] == "still-here"


@pytest_twisted.ensureDeferred
async def test_a_revoked_id_then_gets_401(server):
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    await revoke(server, admin, ref_of(victim))
    assert (await whoami(server, victim)).code == 401


@pytest_twisted.ensureDeferred
async def test_revoke_by_a_session_id_is_400_revokes_nothing_and_the_access_log_does_not_keep_it(server):
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    with Logged() as log:
        answer = await revoke(server, admin, victim)
    assert answer.code == 400
    assert answer.json["message"] == "Give the reference GET /api/websocket/sessions lists, not a session id"
    assert (await whoami(server, victim)).code == 200
    text = " ".join(formatEvent(e) + repr(e) for e in log.events)
    assert "/api/websocket/sessions/<not a reference>" in text
    assert victim not in text


@pytest_twisted.ensureDeferred
async def test_revoke_of_an_unknown_or_already_revoked_reference_is_404(server):
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    await revoke(server, admin, ref_of(victim))
    for ref in ("0123456789ab", ref_of(victim)):
        answer = await revoke(server, admin, ref)
        assert (answer.code, answer.json) == (404, error(404, "Not Found", "No live session matches that reference"))


@pytest_twisted.ensureDeferred
async def test_revoke_of_text_that_is_no_reference_is_400(server):
    admin = await server.session("alice", "admin")
    for text in ("abc", "not a ref", "0123456", "g123456789ab", "a" * 65):
        answer = await revoke(server, admin, text)
        assert answer.code == 400, text
        assert answer.json["message"] == "Give the reference GET /api/websocket/sessions lists, not a session id"


@pytest_twisted.ensureDeferred
async def test_revoke_of_a_reference_two_sessions_share_is_404_and_revokes_neither(server):
    admin = await server.session("alice", "admin")
    now = time.time()
    for suffix in ("1", "2"):
        hashed = "abcdef01" + suffix * 56
        await server.service.database.run(lambda c, h=hashed: c.execute(
            "INSERT INTO sessions (id_hash, user_id, role, created_at, expires_at) VALUES (?, 'twin', 'staff', ?, ?)",
            (h, now, now + 600)))
    assert (await revoke(server, admin, "abcdef01")).code == 404
    states = [s["state"] for s in (await listed(server, admin)).json["sessions"] if s["user_id"] == "twin"]
    assert states == ["live", "live"]


@pytest_twisted.ensureDeferred
async def test_create_and_revoke_are_logged_with_who_did_it_never_an_id_or_token(tokened):
    admin = await tokened.session("alice", "admin")
    with Logged() as log:
        created = (await create(tokened, admin, {"user_id": "bob", "role": "staff"})).json
        await revoke(tokened, TOKEN, created["ref"])
    made, = log.about("created")
    gone, = log.about("revoked")
    assert {k: made[k] for k in ("ref", "user_id", "role", "by")} == {
        "ref": created["ref"], "user_id": "bob", "role": "staff", "by": "alice"}
    assert {k: gone[k] for k in ("ref", "user_id", "role", "by")} == {
        "ref": created["ref"], "user_id": "bob", "role": "staff", "by": "api token"}
    text = " ".join(formatEvent(e) + repr(e) for e in log.events)
    for secret in (admin, created["id"], TOKEN):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_a_python_client_whose_session_is_revoked_stops_for_good(start_server):
    from twisted.internet import task

    from eformws.client import EformClient, Refused

    server = await start_server(SLOW_RECHECK)
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    clock = task.Clock()  # a reconnection would wait on it: none may be scheduled
    client = EformClient(server.http(""), LOCKERS, victim, clock=clock)
    client.connect()
    try:
        await client.when_connected()
        await revoke(server, admin, ref_of(victim))
        with pytest.raises(Refused, match="Session revoked"):
            await client.when_closed()
        assert clock.getDelayedCalls() == []
    finally:
        await client.close()


# -- the Redis store ---------------------------------------------------------------------------------


async def redis_server(start_server, redis_url, redis_prefix):
    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix, **SLOW_RECHECK})
    await server.service.sessions.connection.when_connected()
    return server


@pytest_twisted.ensureDeferred
async def test_redis_store_lists_sessions_by_reference(start_server, redis_url, redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    admin = await server.session("alice", "admin")
    kiosk = await server.session("k1", "kiosk", kiosk="kiosk-1")
    answer = await listed(server, admin)
    assert [(s["ref"], s["user_id"], s["kiosk_id"], s["state"]) for s in answer.json["sessions"]] == [
        (ref_of(admin), "alice", None, "live"), (ref_of(kiosk), "k1", "kiosk-1", "live")]
    assert admin.encode() not in answer.raw


@pytest_twisted.ensureDeferred
async def test_redis_store_creates_a_session_whose_id_authenticates(start_server, redis_url, redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    created = await create(server, await server.session(), {"user_id": "bob", "role": "staff", "ttl": 60})
    assert created.code == 201
    assert (await whoami(server, created.json["id"])).json["user_id"] == "bob"


@pytest_twisted.ensureDeferred
async def test_redis_store_revoke_closes_the_websocket_with_session_revoked_then_401(start_server, redis_url,
                                                                                   redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    client = await server.join(LOCKERS, victim)
    assert (await revoke(server, admin, ref_of(victim))).json == {"revoked": 1}
    assert await client.closed(timeout=2) == (1008, "Session revoked")
    assert (await whoami(server, victim)).code == 401
    states = {s["user_id"]: s["state"] for s in (await listed(server, admin)).json["sessions"]}
    assert states == {"alice": "live", "bob": "revoked"}


async def revoked_at_once(server, admin: str, ref: str, times: int) -> list[int]:
    """The status codes of `times` revokes of `ref` sent together."""
    answers = await defer.gatherResults([defer.ensureDeferred(revoke(server, admin, ref)) for _ in range(times)])
    return sorted(answer.code for answer in answers)


@pytest_twisted.ensureDeferred
async def test_concurrent_revokes_of_one_session_answer_200_once_on_sqlite(server):
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    assert await revoked_at_once(server, admin, ref_of(victim), 20) == [200] + [404] * 19


@pytest_twisted.ensureDeferred
async def test_concurrent_revokes_of_one_session_answer_200_once_on_redis(start_server, redis_url, redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    admin = await server.session("alice", "admin")
    for user in ("bob", "carol", "dave"):  # the race was lost some of the time: try it more than once
        victim = await server.session(user, "staff")
        assert await revoked_at_once(server, admin, ref_of(victim), 20) == [200] + [404] * 19


@pytest_twisted.ensureDeferred
async def test_redis_store_revokes_the_live_session_of_a_reference_a_revoked_one_shares(start_server, redis_url,
                                                                                       redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    admin = await server.session("alice", "admin")
    now = time.time()
    for suffix, revoked in (("1", True), ("2", False)):  # as the SQLite store: a revoked twin is no rival
        record = {"user_id": "twin", "role": "staff", "created_at": now, "expires_at": now + 600, "revoked": revoked}
        await server.service.sessions.connection.command(
            "SET", f"{redis_prefix}session:abcdef01{suffix * 56}", json.dumps(record))
    assert (await revoke(server, admin, "abcdef01")).json == {"revoked": 1}
    states = [s["state"] for s in (await listed(server, admin)).json["sessions"] if s["user_id"] == "twin"]
    assert states == ["revoked", "revoked"]


@pytest_twisted.ensureDeferred
async def test_a_session_id_in_a_path_of_another_spelling_is_404_and_kept_out_of_the_log(server):
    admin = await server.session("alice", "admin")
    victim = await server.session("bob", "staff")
    paths = (f"/api/websocket/sessions//{victim}", f"/api/websocket//sessions/{victim}",
             f"/API/websocket/sessions/{victim}", "/api/websocket//status")
    with Logged() as log:
        codes = [(await call(server, "DELETE", path, headers=bearer(admin))).code for path in paths[:3]]
        codes.append((await call(server, "GET", paths[3], headers=bearer(admin))).code)
    assert codes == [404] * 4  # was a 500 for `//` (a redirect Klein did not expect), with the path logged
    assert (await whoami(server, victim)).code == 200
    text = " ".join(formatEvent(e) + repr(e) for e in log.events)
    assert victim not in text
    assert "unexpected error" not in text


@pytest_twisted.ensureDeferred
async def test_a_redis_session_past_its_expires_at_is_refused_though_its_key_remains(start_server, redis_url,
                                                                                    redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    session_id = "panel-written-session-id-0123456789"
    record = {"user_id": "bob", "role": "staff", "created_at": time.time() - 120, "expires_at": time.time() - 60}
    await server.service.sessions.connection.command(
        "SET", f"{redis_prefix}session:{id_hash(session_id)}", json.dumps(record), "PX", 60000)
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}")
    assert await refused(client) == (1008, "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_redis_store_revoke_of_a_reference_two_live_sessions_share_is_404_and_revokes_neither(
        start_server, redis_url, redis_prefix):
    server = await redis_server(start_server, redis_url, redis_prefix)
    admin = await server.session("alice", "admin")
    now = time.time()
    for suffix in ("1", "2"):
        record = {"user_id": "twin", "role": "staff", "created_at": now, "expires_at": now + 600}
        await server.service.sessions.connection.command(
            "SET", f"{redis_prefix}session:abcdef01{suffix * 56}", json.dumps(record), "PX", 600000)
    assert (await revoke(server, admin, "abcdef01")).code == 404
    states = [s["state"] for s in (await listed(server, admin)).json["sessions"] if s["user_id"] == "twin"]
    assert states == ["live", "live"]


@pytest_twisted.ensureDeferred
async def test_on_a_redis_store_a_session_joins_wamp_by_wampcra_until_it_is_revoked(start_server, redis_url,
                                                                                  redis_prefix):
    from wamp_peer import open_peer

    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix, "wamp.cra_key": "k" * 32,
                                 **SLOW_RECHECK})
    await server.service.sessions.connection.when_connected()
    created = (await create(server, await server.session(), {"user_id": "bob", "role": "staff"})).json
    store = server.service.sessions
    found = await store.lookup_hash(created["wampcra"]["authid"])
    assert (found.id, found.user_id) == (None, "bob")
    assert await store.lookup_hash(created["id"]) is None  # an id is no hash
    peer = open_peer(server, **created["wampcra"])
    assert (await within(peer.joined)).authmethod == "wampcra"
    assert (await revoke(server, await server.session(), created["ref"])).code == 200
    assert (await within(peer.left)).message == "Session revoked"
    again = open_peer(server, **created["wampcra"])
    assert (await within(again.left)).reason == "wamp.error.not_authorized"
