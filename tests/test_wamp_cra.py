"""WAMP-CRA (docs/wamp.md, "Authentication"): a session's authid is the SHA-256 of its id, its
secret an HMAC of `wamp.cra_key`, issued with the id; stock Autobahn clients join with them,
anything else is refused alike, the store is asked only after a valid signature, and no
secret reaches the log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import subprocess
import sys

import pytest
import pytest_twisted
import treq
from autobahn.wamp import auth
from conftest import bearer, within
from js_peers import JS_DIR, NODE, Lines, needs_node
from logcheck import LogCapture, logged_problems  # noqa: F401  (autouse: no error in the log)
from rawsocket_peer import open_rawsocket_peer
from twisted.internet import reactor
from wamp_frames import (  # noqa: F401  (close_raw_clients: autouse, closes raw clients first)
    ABORT,
    AUTHENTICATE,
    CHALLENGE,
    HELLO,
    ROLES,
    WELCOME,
    close_raw_clients,
    connect,
)
from wamp_peer import open_peer

from eformws.sessions.sqlite import create_session, lookup_session_hash, revoke_session

CRA_KEY = secrets.token_urlsafe(32)
TOKEN = "tok-cra"
CRA = {"wamp.cra_key": CRA_KEY, "wamp.rawsocket_port": 0, "auth.api_tokens": [TOKEN]}
ANY_SECRET = base64.b64encode(b"\0" * 32).decode()


@pytest_twisted.async_fixture
async def server(start_server):
    return await start_server(CRA)


async def issue(server, role="staff", user="sam", kiosk=None) -> dict:
    """A new session as POST /api/websocket/sessions answers it."""
    body = {"user_id": user, "role": role, **({"kiosk_id": kiosk} if kiosk else {})}
    response = await treq.post(server.http("/api/websocket/sessions"), json=body, headers=bearer(TOKEN),
                               persistent=False)
    assert response.code == 201
    return json.loads(await treq.content(response))


def signed(secret: str, challenge: str) -> str:
    return auth.compute_wcs(secret, challenge).decode("ascii")


class CountedLookups:
    """Counts the store's lookups by hash (the router's only store access for WAMP-CRA)."""

    def __init__(self, store):
        self.count = 0
        self._lookup = store.lookup_hash
        store.lookup_hash = self

    def __call__(self, hashed):
        self.count += 1
        return self._lookup(hashed)


async def leave(*peers) -> None:
    for peer in peers:
        peer.leave()
        await within(peer.gone)


# -- issued with the id -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_create_answer_carries_the_sessions_authid_and_secret(server):
    created = await issue(server)
    authid = hashlib.sha256(created["id"].encode()).hexdigest()
    expected = base64.b64encode(hmac.new(CRA_KEY.encode(), authid.encode(), hashlib.sha256).digest()).decode()
    assert created["wampcra"] == {"authid": authid, "secret": expected}
    assert created["ref"] == authid[:12]


@pytest_twisted.ensureDeferred
async def test_without_a_cra_key_nothing_of_wampcra_is_issued(start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    assert "wampcra" not in await issue(server)


def test_sessions_create_json_prints_the_answer_of_the_api_with_the_wampcra_credentials(tmp_path):
    database = tmp_path / "sessions.db"
    run = [sys.executable, "-m", "eformws.cli", "sessions", "create", "--user", "sam", "--role", "staff", "--json",
           "--sessions-db", str(database)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    done = subprocess.run(run, capture_output=True, text=True, env={**environment, "EFORMWS_WAMP_CRA_KEY": CRA_KEY},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert list(created) == ["id", "ref", "user_id", "role", "kiosk_id", "expires_at", "wampcra"]
    authid = hashlib.sha256(created["id"].encode()).hexdigest()
    assert created["wampcra"]["authid"] == authid
    assert created["wampcra"]["secret"] == base64.b64encode(
        hmac.new(CRA_KEY.encode(), authid.encode(), hashlib.sha256).digest()).decode()
    plain = subprocess.run(run, capture_output=True, text=True, env=environment, timeout=60)
    assert "wampcra" not in json.loads(plain.stdout)  # no key: nothing of WAMP-CRA


# -- joining -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("transport", "serializer"), [("websocket", "json"), ("websocket", "cbor"),
                                                       ("rawsocket", "msgpack")])
@pytest_twisted.ensureDeferred
async def test_a_stock_session_joins_by_wampcra_with_the_issued_authid_and_secret(server, transport, serializer):
    created = await issue(server, role="kiosk", user="k9", kiosk="kiosk-9")
    opener = open_peer if transport == "websocket" else open_rawsocket_peer
    peer = opener(server, serializer, **created["wampcra"])
    details = await within(peer.joined)
    assert peer.challenges == ["wampcra"]
    assert (details.authid, details.authrole, details.authmethod, details.authprovider) == (
        "k9", "kiosk", "wampcra", "eformws")
    assert details.session == json.loads(peer.cra_challenge)["session"]  # the session the challenge named
    inbox_topic = "eform.lockers.kiosk-9"  # a kiosk's own topics, as with a ticket
    await within(peer.subscribe(print, inbox_topic))
    await leave(peer)


@pytest_twisted.ensureDeferred
async def test_the_challenge_says_what_the_spec_says_and_nothing_of_the_session(server):
    created = await issue(server)
    authid, secret = created["wampcra"]["authid"], created["wampcra"]["secret"]
    nonces = set()
    for _ in range(2):
        client = await connect(server)
        await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["wampcra"], "authid": authid}])
        kind, method, extra = await client.recv()
        assert (kind, method, list(extra)) == (CHALLENGE, "wampcra", ["challenge"])  # no salt: see docs/wamp.md
        challenge = json.loads(extra["challenge"])
        assert sorted(challenge) == ["authid", "authmethod", "authprovider", "authrole", "nonce", "session",
                                     "timestamp"]
        assert (challenge["authid"], challenge["authrole"], challenge["authmethod"], challenge["authprovider"]) == (
            authid, None, "wampcra", "eformws")
        nonces.add(challenge["nonce"])
        await client.send([AUTHENTICATE, signed(secret, extra["challenge"]), {}])
        welcome = await client.recv()
        assert (welcome[0], welcome[1], welcome[2]["authmethod"]) == (WELCOME, challenge["session"], "wampcra")
    assert len(nonces) == 2


async def refused_cra(server, authid: str, secret: str) -> list:
    """A raw session's HELLO (wampcra, `authid`), its CHALLENGE and an AUTHENTICATE signed with
    `secret`: the ABORT that follows (the CHALLENGE's shape is checked on the way)."""
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["wampcra"], "authid": authid}])
    kind, method, extra = await client.recv()
    assert (kind, method, sorted(json.loads(extra["challenge"]))) == (CHALLENGE, "wampcra", [
        "authid", "authmethod", "authprovider", "authrole", "nonce", "session", "timestamp"])
    await client.send([AUTHENTICATE, signed(secret, extra["challenge"]), {}])
    aborted = await client.recv()
    assert (await client.closed())[0] == 1000
    return aborted


@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_and_an_unknown_authid_are_refused_alike_without_asking_the_store(server):
    created = await issue(server)
    lookups = CountedLookups(server.service.sessions)
    wrong_secret = await refused_cra(server, created["wampcra"]["authid"], ANY_SECRET)
    unknown_authid = await refused_cra(server, "0" * 64, ANY_SECRET)
    not_a_hash = await refused_cra(server, "alice", ANY_SECRET)
    assert wrong_secret == unknown_authid == not_a_hash == [ABORT, {"message": "Authentication failed"},
                                                             "wamp.error.not_authorized"]
    assert lookups.count == 0  # nothing to time: the store is asked only after a valid signature


@pytest_twisted.ensureDeferred
async def test_a_stock_session_with_a_wrong_secret_is_aborted_not_authorized(server):
    created = await issue(server)
    peer = open_peer(server, authid=created["wampcra"]["authid"], secret=ANY_SECRET)
    details = await within(peer.left)
    assert (details.reason, details.message) == ("wamp.error.not_authorized", "Authentication failed")


@pytest_twisted.ensureDeferred
async def test_a_revoked_session_is_told_so_and_then_refused_like_an_unknown_one(server):
    created = await issue(server)
    peer = open_peer(server, **created["wampcra"])
    await within(peer.joined)
    response = await treq.delete(server.http(f"/api/websocket/sessions/{created['ref']}"), headers=bearer(TOKEN),
                                 persistent=False)
    assert response.code == 200
    details = await within(peer.left)  # found by the hash of its id, rechecked by it too
    assert (details.reason, details.message) == ("wamp.close.close_realm", "Session revoked")
    lookups = CountedLookups(server.service.sessions)
    # a signature only the holder of the secret can make, for a session the store no longer has live
    aborted = await refused_cra(server, created["wampcra"]["authid"], created["wampcra"]["secret"])
    assert aborted == [ABORT, {"message": "Authentication failed"}, "wamp.error.not_authorized"]
    assert lookups.count == 1


@pytest_twisted.ensureDeferred
async def test_without_a_cra_key_a_hello_offering_only_wampcra_is_told_it_is_not_enabled(start_server):
    server = await start_server({})
    sid = await server.session(role="staff")
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["wampcra"], "authid": "0" * 64}])
    aborted = await client.recv()
    assert aborted[0] == ABORT and aborted[2] == "wamp.error.not_authorized"
    assert "wampcra is not enabled on this router" in aborted[1]["message"]
    peer = open_peer(server, authmethods=["wampcra", "ticket"], ticket=sid, authid="0" * 64)  # ticket after it
    details = await within(peer.joined)
    assert (peer.challenges, details.authmethod) == (["ticket"], "ticket")
    await leave(peer)


@pytest_twisted.ensureDeferred
async def test_wampcra_without_an_authid_is_told_what_to_give(server):
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["wampcra"]}])
    aborted = await client.recv()
    assert aborted[2] == "wamp.error.not_authorized"
    assert "wampcra needs an authid (the hex SHA-256 of the session id)" in aborted[1]["message"]


@pytest_twisted.ensureDeferred
async def test_no_session_id_secret_or_signature_reaches_the_log(start_server):
    server = await start_server({**CRA, "log.level": "debug"})
    with LogCapture() as capture:
        created = await issue(server)
        peer = open_peer(server, **created["wampcra"])
        await within(peer.joined)
        await leave(peer)
        await refused_cra(server, created["wampcra"]["authid"], ANY_SECRET)
        secret, session_id = created["wampcra"]["secret"], created["id"]
    texts = capture.texts()
    assert any("joined by wampcra" in text for text in texts), texts
    assert [text for text in texts if secret in text or session_id in text or CRA_KEY in text] == []


# -- Autobahn|JS -----------------------------------------------------------------------------------


@needs_node
@pytest_twisted.ensureDeferred
async def test_autobahn_js_joins_by_wampcra_with_auth_cra_sign(server):
    assert NODE is not None, "Node is here but tests/js/node_modules is not: npm ci --prefix tests/js"
    created = await issue(server, role="admin", user="ada")
    child = Lines()
    reactor.spawnProcess(child, NODE[0], [*NODE, "cra.js", server.url("/wamp"),
                                          created["wampcra"]["authid"], created["wampcra"]["secret"]],
                         env=dict(os.environ), path=str(JS_DIR))
    seen = json.loads(await within(child.lines.get(), 20))
    assert seen == {"authid": "ada", "authrole": "admin", "authmethod": "wampcra"}, child.stderr
    assert await within(child.ended, 10) == 0, child.stderr


# -- the stores' lookup by hash ----------------------------------------------------------------


def test_the_sqlite_store_finds_a_live_session_by_the_hash_of_its_id_and_nothing_else(tmp_path):
    connection = sqlite3.connect(tmp_path / "sessions.db")
    live = create_session(connection, "sam", "staff", None, 100.0, now=1000.0)
    found = lookup_session_hash(connection, live.id_hash, now=1050.0)
    assert (found.id, found.id_hash, found.user_id, found.role, found.expires_at) == (
        None, live.id_hash, "sam", "staff", 1100.0)
    assert lookup_session_hash(connection, live.id_hash, now=1100.0) is None  # expired
    assert lookup_session_hash(connection, live.id_hash.upper(), now=1050.0) is None  # no hash as stored
    assert lookup_session_hash(connection, live.id, now=1050.0) is None  # the id is no hash
    revoke_session(connection, live.id)
    assert lookup_session_hash(connection, live.id_hash, now=1050.0) is None  # revoked
