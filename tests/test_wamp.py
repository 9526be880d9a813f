"""WAMP v2 on /wamp (PROTOCOL.md section 9) from the side of stock Autobahn|Python clients,
JSON and MessagePack, against a real server: auth, broker (topic map, prefix matches, the
hub's deliveries), admin PUBLISH as broadcast, the eform.* procedures, GOODBYE both ways.

Legacy clients are `websockets` connections, as in the rest of the suite. The
cross-process case (a WAMP subscriber on one process, the emit on another, through Redis)
belongs with the Redis bus tests."""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from autobahn.twisted.wamp import ApplicationRunner
from autobahn.wamp.serializer import MsgPackSerializer
from autobahn.wamp.types import PublishOptions
from conftest import locker, within
from logcheck import logged_problems  # noqa: F401  (autouse: no error in the log)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from js_peers import JS_DIR, NODE, Lines, needs_node
from wamp_peer import REALM, Peer, call_error, join, open_peer, subscribe

from eformws.core.message import Message, Target
from eformws.transports.wamp.codec import JsonCodec

LOCKERS = "/ws/lockers"


# -- authentication ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ticket_auth_joins_with_the_sessions_user_and_role(server):
    sid = await server.session(user="alice", role="staff")
    peer = open_peer(server, ticket=sid)
    details = await within(peer.joined)
    assert peer.challenges == ["ticket"]
    assert (details.realm, details.authmethod, details.authid, details.authrole) == (REALM, "ticket", "alice", "staff")


@pytest_twisted.ensureDeferred
async def test_application_runner_joins_over_msgpack_with_a_ticket(server):
    sid = await server.session(user="bob", role="admin")
    made = Deferred()

    def make(config):
        peer = Peer(config.realm, ["ticket"], sid)
        made.callback(peer)
        return peer

    runner = ApplicationRunner(server.url("/wamp"), REALM, serializers=[MsgPackSerializer()])
    await within(runner.run(make, start_reactor=False))
    peer = await within(made)
    details = await within(peer.joined)
    assert (details.authmethod, details.authid, details.authrole) == ("ticket", "bob", "admin")
    assert details.serializer.startswith("msgpack")


@pytest_twisted.ensureDeferred
async def test_cookie_auth_uses_the_session_cookie_of_the_upgrade(server):
    sid = await server.session(user="carol", role="staff")
    peer = open_peer(server, cookie=sid, authmethods=["cookie"])
    details = await within(peer.joined)
    assert peer.challenges == []
    assert (details.authmethod, details.authid, details.authrole) == ("cookie", "carol", "staff")


@pytest_twisted.ensureDeferred
async def test_a_valid_cookie_is_enough_without_listing_cookie(server):
    sid = await server.session(user="carol", role="staff")
    peer = open_peer(server, cookie=sid)
    details = await within(peer.joined)
    assert details.authmethod == "cookie"


@pytest_twisted.ensureDeferred
async def test_unknown_ticket_is_aborted_not_authorized(server):
    peer = open_peer(server, ticket="not-a-session-id-at-all")
    details = await within(peer.left)
    assert details.reason == "wamp.error.not_authorized"
    assert not peer.joined.called


@pytest_twisted.ensureDeferred
async def test_unknown_cookie_is_aborted_not_authorized(server):
    peer = open_peer(server, cookie="not-a-session-id-at-all", authmethods=["cookie"])
    details = await within(peer.left)
    assert details.reason == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_no_credentials_are_aborted_not_authorized(server):
    peer = open_peer(server, authmethods=["anonymous"])
    details = await within(peer.left)
    assert details.reason == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_another_realm_is_aborted_no_such_realm(server):
    sid = await server.session()
    peer = open_peer(server, ticket=sid, realm="realm1")
    details = await within(peer.left)
    assert details.reason == "wamp.error.no_such_realm"
    assert peer.challenges == []


# -- broker: the topic map and the hub's deliveries ---------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
@pytest_twisted.ensureDeferred
async def test_emit_reaches_the_room_topic_subscriber_and_the_legacy_client_alike(server, serializer):
    peer = await join(server, serializer)
    inbox, _ = await subscribe(peer, "eform.lockers.locker_updates")
    legacy = await server.join(LOCKERS, await server.session())
    stored = await server.service.events.emit("locker_state_changed", locker())
    envelope, details = await inbox.next()
    assert envelope == stored
    assert await legacy.recv() == stored
    assert details.topic == "eform.lockers.locker_updates"


@pytest_twisted.ensureDeferred
async def test_prefix_subscription_reports_the_concrete_topic(server):
    peer = await join(server)
    inbox, _ = await subscribe(peer, "eform.lockers", match="prefix")
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-7", "door", {"open": True})
    envelope, details = await inbox.next()
    assert envelope["room"] == "kiosk-7" and envelope["type"] == "door"
    assert details.topic == "eform.lockers.kiosk-7"


@pytest_twisted.ensureDeferred
async def test_a_subscription_gets_an_event_once_however_many_of_its_topics_match(server):
    peer = await join(server)
    inbox, _ = await subscribe(peer, "eform", match="prefix")
    # published on five topics: eform.lockers.{locker_updates,kiosk-1}, eform.events.{locker_updates,system_events,kiosk-1}
    first = await server.service.events.emit("locker_state_changed", locker())
    second = await server.service.events.emit("locker_state_changed", locker(kiosk="kiosk-2"))
    assert (await inbox.next())[0]["id"] == first["id"]
    assert (await inbox.next())[0]["id"] == second["id"]


@pytest_twisted.ensureDeferred
async def test_each_matching_subscription_of_a_session_gets_its_own_event(server):
    peer = await join(server)
    exact, exact_subscription = await subscribe(peer, "eform.lockers.kiosk-1")
    prefix, prefix_subscription = await subscribe(peer, "eform.lockers", match="prefix")
    assert exact_subscription.id != prefix_subscription.id
    stored = await server.service.events.emit("locker_state_changed", locker())
    assert (await exact.next())[0] == stored
    assert (await prefix.next())[0] == stored


@pytest_twisted.ensureDeferred
async def test_wildcard_subscription_matches_one_component_per_empty_one(server):
    peer = await join(server)
    inbox, _ = await subscribe(peer, "eform..kiosk-1", match="wildcard")
    await server.service.events.broadcast_to_room("/ws/help", "kiosk-1", "ring", {})
    envelope, details = await inbox.next()
    assert envelope["namespace"] == "/ws/help" and details.topic == "eform.help.kiosk-1"


@pytest_twisted.ensureDeferred
async def test_namespace_broadcast_is_published_on_the_namespace_topic(server):
    peer = await join(server)
    inbox, _ = await subscribe(peer, "eform.lockers")
    await server.service.events.broadcast(LOCKERS, "maintenance", {"minutes": 5})
    envelope, _ = await inbox.next()
    assert list(envelope) == ["type", "data", "timestamp", "namespace"]
    assert (envelope["type"], envelope["data"], envelope["namespace"]) == ("maintenance", {"minutes": 5}, LOCKERS)


@pytest_twisted.ensureDeferred
async def test_unsubscribed_topic_gets_no_more_events(server):
    peer = await join(server)
    lockers, subscription = await subscribe(peer, "eform.lockers")
    help_, _ = await subscribe(peer, "eform.help")
    await within(subscription.unsubscribe())
    await server.service.events.broadcast(LOCKERS, "first", {})
    await server.service.events.broadcast("/ws/help", "second", {})
    assert (await help_.next())[0]["type"] == "second"
    assert lockers.empty


@pytest_twisted.ensureDeferred
async def test_kiosk_session_sees_only_the_rooms_a_legacy_kiosk_may_join(server):
    peer = await join(server, role="kiosk", kiosk="kiosk-1")
    inbox, _ = await subscribe(peer, "eform.lockers", match="prefix")
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-2", "other", {})
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-1", "own", {})
    envelope, details = await inbox.next()
    assert envelope["type"] == "own" and details.topic == "eform.lockers.kiosk-1"


@pytest_twisted.ensureDeferred
async def test_sessions_of_one_serialization_share_one_event_frame(server, monkeypatch):
    built = []
    original = JsonCodec.event

    def counting(self, *args):
        built.append(args[0])
        return original(self, *args)

    monkeypatch.setattr(JsonCodec, "event", counting)
    inboxes = []
    for _ in range(3):
        peer = await join(server)
        inboxes.append((await subscribe(peer, "eform.lockers"))[0])
    await server.service.events.broadcast(LOCKERS, "once", {})
    for inbox in inboxes:
        assert (await inbox.next())[0]["type"] == "once"
    assert len(built) == 1


# -- PUBLISH ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_admin_publish_on_a_room_topic_reaches_legacy_members_of_the_room(server):
    sid = await server.session(role="admin")
    legacy = await server.join(LOCKERS, sid)
    await legacy.send({"type": "join_room", "data": {"room": "kiosk-1"}})
    assert (await legacy.recv())["type"] == "room_joined"
    peer = await join(server)
    publication = await within(
        peer.publish("eform.lockers.kiosk-1", "maintenance", {"minutes": 5}, options=PublishOptions(acknowledge=True))
    )
    assert isinstance(publication.id, int)
    envelope = await legacy.recv()
    assert list(envelope) == ["type", "data", "timestamp", "namespace", "room"]
    assert (envelope["type"], envelope["data"], envelope["room"]) == ("maintenance", {"minutes": 5}, "kiosk-1")


@pytest_twisted.ensureDeferred
async def test_unacknowledged_admin_publish_on_a_namespace_topic_is_a_namespace_broadcast(server):
    legacy = await server.join(LOCKERS, await server.session(role="staff"))
    peer = await join(server)
    peer.publish("eform.lockers", "notice", {"text": "hi"})
    envelope = await legacy.recv()
    assert (envelope["type"], envelope["data"], envelope["namespace"]) == ("notice", {"text": "hi"}, LOCKERS)
    assert "room" not in envelope


@pytest_twisted.ensureDeferred
async def test_publish_by_a_non_admin_is_not_authorized(server):
    peer = await join(server, role="staff")
    error = await call_error(peer.publish("eform.lockers", "x", {}, options=PublishOptions(acknowledge=True)))
    assert error.error == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_publisher_is_excluded_from_its_own_event_unless_it_asks(server):
    peer = await join(server)
    inbox, _ = await subscribe(peer, "eform.lockers")
    acknowledged = PublishOptions(acknowledge=True)
    await within(peer.publish("eform.lockers", "excluded", {}, options=acknowledged))
    await within(peer.publish("eform.lockers", "included", {}, options=PublishOptions(acknowledge=True, exclude_me=False)))
    envelope, _ = await inbox.next()
    assert envelope["type"] == "included"


@pytest_twisted.ensureDeferred
async def test_event_publication_id_is_the_published_one(server):
    publisher = await join(server)
    subscriber = await join(server, role="staff")
    inbox, _ = await subscribe(subscriber, "eform.lockers")
    publication = await within(publisher.publish("eform.lockers", "n", {}, options=PublishOptions(acknowledge=True)))
    _, details = await inbox.next()
    assert details.publication == publication.id


@pytest_twisted.ensureDeferred
async def test_publish_to_an_unknown_namespace_is_refused(server):
    peer = await join(server)
    error = await call_error(peer.publish("eform.nowhere", "x", {}, options=PublishOptions(acknowledge=True)))
    assert error.error == "eform.error.no_such_namespace"


@pytest_twisted.ensureDeferred
async def test_publish_to_a_topic_outside_the_map_is_invalid_uri(server):
    peer = await join(server)
    error = await call_error(peer.publish("eform.lockers.a.b", "x", {}, options=PublishOptions(acknowledge=True)))
    assert error.error == "wamp.error.invalid_uri"


def test_publication_id_and_exclusion_survive_the_bus_json():
    message = Message({"type": "x"}, (Target(LOCKERS),), meta={"wamp": {"publication": 7, "exclude": "c-1"}})
    again = Message.from_json(json.loads(json.dumps(message.to_json())))
    assert again.meta == {"wamp": {"publication": 7, "exclude": "c-1"}}
    assert "meta" not in Message({"type": "x"}, (Target(LOCKERS),)).to_json()


# -- procedures --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_is_the_http_status_object_counting_wamp_sessions(server):
    await server.join(LOCKERS, await server.session())
    peer = await join(server, role="kiosk", kiosk="kiosk-1")
    status = await within(peer.call("eform.status"))
    assert list(status)[:5] == ["status", "namespaces", "total_connections", "latency_metrics", "timestamp"]
    assert status["namespaces"] == {"/ws/lockers": 1, "/ws/help": 0, "/ws/events": 0}
    assert status["endpoints"] == {"/wamp": 1}
    assert status["total_connections"] == 2


@pytest_twisted.ensureDeferred
async def test_broadcast_procedure_reaches_the_legacy_room(server):
    legacy = await server.join(LOCKERS, await server.session())
    peer = await join(server, "msgpack")
    result = await within(peer.call("eform.broadcast", LOCKERS, "maintenance", {"m": 1}, room="locker_updates"))
    assert result["success"] is True and result["message"] == "Broadcast sent to /ws/lockers/locker_updates"
    assert result["delivered"] == 1
    envelope = await legacy.recv()
    assert (envelope["type"], envelope["room"]) == ("maintenance", "locker_updates")


@pytest_twisted.ensureDeferred
async def test_broadcast_procedure_by_a_non_admin_is_not_authorized(server):
    peer = await join(server, role="staff")
    error = await call_error(peer.call("eform.broadcast", LOCKERS, "x", {}))
    assert error.error == "wamp.error.not_authorized"


@pytest_twisted.ensureDeferred
async def test_broadcast_procedure_without_data_is_an_invalid_argument(server):
    peer = await join(server)
    error = await call_error(peer.call("eform.broadcast", LOCKERS, "x"))
    assert error.error == "wamp.error.invalid_argument"
    assert "data" in error.args[0]


@pytest_twisted.ensureDeferred
async def test_emit_procedure_stores_and_delivers_the_event(server):
    legacy = await server.join(LOCKERS, await server.session())
    peer = await join(server)
    stored = await within(peer.call("eform.emit", "locker_state_changed", locker()))
    assert stored["type"] == "locker_state_changed" and stored["seq"] is not None
    assert await legacy.recv() == stored


@pytest_twisted.ensureDeferred
async def test_emit_procedure_with_an_invalid_event_names_the_field(server):
    peer = await join(server)
    error = await call_error(peer.call("eform.emit", "locker_state_changed", {**locker(), "newState": "ajar"}))
    assert error.error == "eform.error.invalid_event"
    assert error.args[0].startswith("data.newState must be one of")
    assert error.kwargs == {"field": "data.newState"}


@pytest_twisted.ensureDeferred
async def test_emit_procedure_with_a_repeated_idempotency_key_answers_the_first_event(server):
    legacy = await server.join(LOCKERS, await server.session())
    peer = await join(server)
    first = await within(peer.call("eform.emit", "locker_state_changed", locker(), idempotency_key="wamp-1"))
    again = await within(peer.call("eform.emit", "locker_state_changed", locker(), idempotency_key="wamp-1"))
    assert again == first
    assert await legacy.recv() == first
    other = await within(peer.call("eform.emit", "locker_state_changed", locker(kiosk="kiosk-2")))
    assert await legacy.recv() == other  # the repeat was never delivered


@pytest_twisted.ensureDeferred
async def test_emit_procedure_with_a_key_used_for_another_event_is_an_idempotency_conflict(server):
    peer = await join(server)
    await within(peer.call("eform.emit", "locker_state_changed", locker(), idempotency_key="wamp-2"))
    error = await call_error(
        peer.call("eform.emit", "locker_state_changed", locker(kiosk="kiosk-2"), idempotency_key="wamp-2")
    )
    assert (error.error, error.args[0]) == (
        "eform.error.idempotency_conflict", "idempotency_key was already used for a different event"
    )


@pytest.mark.parametrize("key", ["", "with space", 17])
@pytest_twisted.ensureDeferred
async def test_emit_procedure_with_a_malformed_idempotency_key_is_an_invalid_argument(server, key):
    peer = await join(server)
    error = await call_error(peer.call("eform.emit", "locker_state_changed", locker(), idempotency_key=key))
    assert error.error == "wamp.error.invalid_argument"
    assert error.args[0].startswith("idempotency_key must be")


@pytest_twisted.ensureDeferred
async def test_unknown_procedure_is_no_such_procedure(server):
    peer = await join(server)
    error = await call_error(peer.call("eform.nothing"))
    assert error.error == "wamp.error.no_such_procedure"


@pytest_twisted.ensureDeferred
async def test_register_outside_the_permission_table_is_refused_not_authorized(server):
    peer = await join(server)
    error = await call_error(peer.register(lambda: None, "com.example.mine"))
    assert error.error == "wamp.error.not_authorized"


# -- closing ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_goodbye_is_answered_and_the_session_no_longer_counts(server):
    peer = await join(server)
    assert server.hub.connection_count("/wamp") == 1
    peer.leave()
    details = await within(peer.left)
    assert details.reason == "wamp.close.goodbye_and_out"
    await within(peer.gone)
    assert server.hub.connection_count("/wamp") == 0


@pytest_twisted.ensureDeferred
async def test_shutdown_says_goodbye_system_shutdown(server):
    peer = await join(server)
    (connection,) = server.service.wamp.connections.values()
    closed = connection.closed
    server.hub.close_all(1001, "Server shutdown")
    details = await within(peer.left)
    assert details.reason == "wamp.close.system_shutdown"
    await within(closed)
    await within(peer.gone)


# -- Autobahn|JS (optional: needs node and `npm install --prefix tests/js`) ----------------------




# Skipped only where there is no Node at all; under scripts/test (which runs `npm ci` when
# Node is there) a missing Autobahn|JS is a failure.
@needs_node
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest_twisted.ensureDeferred
async def test_autobahn_js_subscriber_gets_the_envelope_on_its_prefix(server, serializer):
    assert NODE is not None, "Node is here but tests/js/node_modules is not: npm ci --prefix tests/js"
    sid = await server.session(role="staff")
    child = Lines()
    arguments = [*NODE, "subscriber.js", server.url("/wamp"), sid, serializer]
    reactor.spawnProcess(child, NODE[0], arguments, env=dict(os.environ), path=str(JS_DIR))
    ready = json.loads(await within(child.lines.get(), 20))
    assert ready == {"ready": True, "authmethod": "ticket", "wamp": 1}, child.stderr
    stored = await server.service.events.emit("locker_state_changed", locker())
    event = json.loads(await within(child.lines.get()))
    assert event == {"envelope": stored, "topic": "eform.lockers.locker_updates"}
    assert await within(child.ended) == 0, child.stderr


@pytest.mark.parametrize("frame", [
    b'[48,1,{},"app.x",["plain",1.5,null,true],{"k":[{"deep":"\\u00e9"}]}]',
    b'[48,2,{},"app.x",["\\u0000AAE=","a"],{"k":"\\u0000"}]',  # byte strings, as Autobahn writes them
    b'[48,3,{},"app.x",["\\\\u0000 is text"]]',
    b'[16,4,{},"app.t",[1e400,-0.0,NaN]]',
])
def test_a_json_frame_decodes_to_what_autobahns_decoder_makes_of_it(frame):
    from autobahn.wamp.serializer import JsonObjectSerializer, Serializer

    ours = [m.marshal() for m in JsonCodec().decode(frame, False)]
    theirs = [Serializer.MESSAGE_TYPE_MAP[raw[0]].parse(raw).marshal() for raw in JsonObjectSerializer().unserialize(frame)]
    assert repr(ours) == repr(theirs)
