"""Sensitive fields (`events.sensitive_fields`, default user_contact, metadata.ownerKey and
note): removed for roles outside `auth.sensitive_roles` (default admin, staff) on every way
out (live, replay, resume, WAMP, /api/websocket/health), framed once per audience."""

from __future__ import annotations

import pytest
import pytest_twisted
import treq
from conftest import locker, within
from wamp_peer import open_peer, subscribe

from eformws.delivery.redaction import Redactor
from eformws.transports.legacy import JsonFraming

HELP, LOCKERS, EVENTS = "/ws/help", "/ws/lockers", "/ws/events"
CREATED_AT = "2024-01-15T10:30:00.000Z"


def help_request(kiosk="kiosk-1"):
    return {
        "id": 17, "kiosk_id": kiosk, "category": "hardware_problem", "status": "open", "created_at": CREATED_AT,
        "note": "door stuck", "user_contact": "+44 7700 900123", "locker_no": 12,
    }


def locker_change(kiosk="kiosk-1"):
    return locker(kiosk=kiosk, metadata={"ownerKey": "rfid-55AA", "ownerType": "rfid"})


async def kiosk_client(server, path, kiosk="kiosk-1"):
    return await server.join(path, await server.session(user="k1", role="kiosk", kiosk=kiosk))


@pytest_twisted.ensureDeferred
async def test_staff_get_sensitive_help_fields_and_kiosks_get_them_removed(server):
    staff = await server.join(HELP, await server.session(role="staff"))
    kiosk = await kiosk_client(server, HELP)
    await server.service.events.emit("help_requested", help_request())
    full, redacted = await staff.recv(), await kiosk.recv()
    assert (full["data"]["note"], full["data"]["user_contact"]) == ("door stuck", "+44 7700 900123")
    assert "note" not in redacted["data"] and "user_contact" not in redacted["data"]
    assert {k: v for k, v in full.items() if k != "data"} == {k: v for k, v in redacted.items() if k != "data"}
    assert redacted["data"]["locker_no"] == 12


@pytest_twisted.ensureDeferred
async def test_nested_owner_key_is_removed_and_its_siblings_kept(server):
    kiosk = await kiosk_client(server, LOCKERS)
    await server.service.events.emit("locker_state_changed", locker_change())
    message = await kiosk.recv()
    assert message["data"]["metadata"] == {"ownerType": "rfid"}


@pytest_twisted.ensureDeferred
async def test_admin_sees_the_nested_owner_key(server):
    admin = await server.join(LOCKERS, await server.session(role="admin"))
    await server.service.events.emit("locker_state_changed", locker_change())
    assert (await admin.recv())["data"]["metadata"]["ownerKey"] == "rfid-55AA"


@pytest_twisted.ensureDeferred
async def test_plain_broadcasts_are_redacted_too(server):
    kiosk = await kiosk_client(server, LOCKERS)
    server.service.events.broadcast(LOCKERS, "notice", {"note": "private", "text": "public"})
    assert (await kiosk.recv())["data"] == {"text": "public"}


@pytest_twisted.ensureDeferred
async def test_replay_on_connect_is_redacted_for_kiosks(server):
    await server.service.events.emit("help_requested", help_request())
    kiosk = await kiosk_client(server, HELP)
    replayed = await kiosk.recv()
    assert replayed["type"] == "help_requested"
    assert "note" not in replayed["data"] and "user_contact" not in replayed["data"]


@pytest_twisted.ensureDeferred
async def test_resume_is_redacted_for_kiosks(server):
    first = await server.service.events.emit("help_requested", help_request())
    await server.service.events.emit("help_requested", help_request())
    session_id = await server.session(user="k1", role="kiosk", kiosk="kiosk-1")
    client = await server.connect(f"{HELP}?sessionId={session_id}&since={first['seq']}")
    messages = [await client.recv() for _ in range(4)]
    assert [m["type"] for m in messages] == ["connection", "room_joined", "help_requested", "resumed"]
    assert "note" not in messages[2]["data"]


@pytest_twisted.ensureDeferred
async def test_wamp_subscriber_without_the_role_gets_the_redacted_envelope(server):
    peer = open_peer(server, "json", ticket=await server.session(user="k1", role="kiosk", kiosk="kiosk-1"))
    await within(peer.joined)
    inbox, _ = await subscribe(peer, "eform.help.help_requests")
    await server.service.events.emit("help_requested", help_request())
    envelope, _ = await inbox.next()
    assert "note" not in envelope["data"] and "user_contact" not in envelope["data"]


@pytest_twisted.ensureDeferred
async def test_a_wamp_event_has_one_publication_id_whatever_the_audience(server):
    kiosk = open_peer(server, "json", ticket=await server.session(user="k1", role="kiosk", kiosk="kiosk-1"))
    admin = open_peer(server, "msgpack", ticket=await server.session(user="alice", role="admin"))
    await within(kiosk.joined)
    await within(admin.joined)
    inboxes = [(await subscribe(peer, "eform.help.help_requests"))[0] for peer in (kiosk, admin)]
    for _ in range(2):
        await server.service.events.emit("help_requested", help_request())
        (redacted, seen_by_kiosk), (full, seen_by_admin) = [await inbox.next() for inbox in inboxes]
        assert "note" not in redacted["data"] and full["data"]["note"] == "door stuck"
        assert seen_by_kiosk.publication == seen_by_admin.publication  # was a new random id per audience


@pytest_twisted.ensureDeferred
async def test_health_endpoint_redacts_recent_events_for_kiosk_sessions(server):
    await server.service.events.emit("help_requested", help_request())
    session_id = await server.session(user="k1", role="kiosk", kiosk="kiosk-1")
    response = await treq.get(server.http("/api/websocket/health"), persistent=False,
                              headers={b"Authorization": [f"Bearer {session_id}".encode()]})
    body = await response.json()
    assert all("note" not in event["data"] for event in body["events"])
    assert body["events"], body


@pytest_twisted.ensureDeferred
async def test_a_broadcast_is_framed_once_per_audience_not_per_client(server, monkeypatch):
    prepared = []
    original = JsonFraming.prepare

    def counting(self, message):
        prepared.append(message.envelope)
        return original(self, message)

    monkeypatch.setattr(JsonFraming, "prepare", counting)
    staff_id = await server.session(role="staff")
    clients = [await server.join(HELP, staff_id) for _ in range(5)]
    clients += [await kiosk_client(server, HELP) for _ in range(5)]
    await server.service.events.emit("help_requested", help_request())
    for client in clients:
        await client.recv()
    assert len(prepared) == 2
    assert sum("note" in envelope["data"] for envelope in prepared) == 1


@pytest_twisted.ensureDeferred
async def test_an_event_without_sensitive_fields_is_framed_once_for_every_audience(server, monkeypatch):
    prepared = []
    original = JsonFraming.prepare
    monkeypatch.setattr(JsonFraming, "prepare", lambda self, m: prepared.append(m) or original(self, m))
    clients = [await server.join(LOCKERS, await server.session(role="staff")), await kiosk_client(server, LOCKERS)]
    server.service.events.broadcast(LOCKERS, "notice", {"text": "public"})
    for client in clients:
        await client.recv()
    assert len(prepared) == 1


@pytest_twisted.ensureDeferred
async def test_configured_fields_and_roles_replace_the_defaults(start_server):
    server = await start_server({"events.sensitive_fields": ["locker_no"], "auth.sensitive_roles": ["admin"]})
    staff = await server.join(HELP, await server.session(role="staff"))
    await server.service.events.emit("help_requested", help_request())
    data = (await staff.recv())["data"]
    assert "locker_no" not in data and data["note"] == "door stuck"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"a": 1}, {"a": 1}),
        ({"note": "x", "a": 1}, {"a": 1}),
        ({"metadata": {"ownerKey": "k"}}, {"metadata": {}}),
        ({"metadata": "not an object"}, {"metadata": "not an object"}),
        ({"metadata": {"other": 1}}, {"metadata": {"other": 1}}),
    ],
)
def test_redactor_removes_exactly_the_configured_paths(data, expected):
    envelope = {"type": "t", "data": data}
    assert Redactor(["note", "metadata.ownerKey"]).redact(envelope) == {"type": "t", "data": expected}


def test_redactor_returns_the_same_envelope_when_nothing_is_removed():
    envelope = {"type": "t", "data": {"a": {"b": 1}}}
    assert Redactor(["note", "a.c"]).redact(envelope) is envelope


def test_redactor_never_changes_the_original():
    envelope = {"type": "t", "data": {"note": "x", "metadata": {"ownerKey": "k", "o": 1}}}
    Redactor(["note", "metadata.ownerKey"]).redact(envelope)
    assert envelope == {"type": "t", "data": {"note": "x", "metadata": {"ownerKey": "k", "o": 1}}}


@pytest_twisted.ensureDeferred
async def test_a_kiosk_replaying_an_event_staff_replayed_first_gets_it_redacted(server):
    await server.service.events.emit("help_requested", help_request())
    staff = await server.join(HELP, await server.session(role="staff"))
    assert (await staff.recv())["data"]["note"] == "door stuck"
    kiosk = await server.join(HELP, await server.session(user="k1", role="kiosk", kiosk="kiosk-1"))
    replayed = await kiosk.recv()
    assert replayed["type"] == "help_requested"
    assert "note" not in replayed["data"] and "user_contact" not in replayed["data"]


@pytest_twisted.ensureDeferred
async def test_staff_replaying_an_event_a_kiosk_replayed_first_get_its_sensitive_fields(server):
    await server.service.events.emit("help_requested", help_request())
    kiosk = await server.join(HELP, await server.session(user="k1", role="kiosk", kiosk="kiosk-1"))
    assert "note" not in (await kiosk.recv())["data"]
    staff = await server.join(HELP, await server.session(role="staff"))
    replayed = await staff.recv()
    assert (replayed["data"]["note"], replayed["data"]["user_contact"]) == ("door stuck", "+44 7700 900123")
