"""WAMP v2 on /wamp at the frame level (`websockets`, raw JSON and MessagePack arrays): the
subprotocol handshake, WELCOME's announced roles, the exact EVENT shape, and protocol errors,
each answered with ABORT or ERROR as the WAMP Basic Profile says, never with a logged error."""

from __future__ import annotations

import asyncio
import json

import cbor2
import msgpack
import pytest
import pytest_twisted
import websockets

from conftest import within
from logcheck import logged_problems  # noqa: F401  (autouse: no error in the log)
from wamp_frames import (  # noqa: F401  (close_raw_clients: autouse, closes raw clients first)
    ABORT,
    AUTHENTICATE,
    CALL,
    CHALLENGE,
    ERROR,
    EVENT,
    GOODBYE,
    HELLO,
    PUBLISH,
    RESULT,
    ROLES,
    SUBSCRIBE,
    SUBSCRIBED,
    UNSUBSCRIBE,
    WELCOME,
    YIELD,
    assert_aborted,
    close_raw_clients,
    connect,
    join,
    next_or_close,
    opened,
)


# -- the handshake --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upgrade_without_a_wamp_subprotocol_is_refused_400(server):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await server.connect("/wamp")
    assert refused.value.response.status_code == 400


@pytest_twisted.ensureDeferred
async def test_upgrade_with_only_unknown_subprotocols_is_refused_400(server):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await server.connect("/wamp", subprotocols=["wamp.2.ubjson", "mqtt"])
    assert refused.value.response.status_code == 400


@pytest_twisted.ensureDeferred
async def test_upgrade_takes_the_first_subprotocol_the_client_offers(server):
    client = await server.connect("/wamp", subprotocols=["wamp.2.msgpack", "wamp.2.json"])
    opened.append(client)
    assert client.connection.subprotocol == "wamp.2.msgpack"


@pytest_twisted.ensureDeferred
async def test_welcome_announces_broker_and_dealer_with_supported_features_only(server):
    _, welcome = await join(server)
    session_id, details = welcome[1], welcome[2]
    assert isinstance(session_id, int) and 1 <= session_id <= 2**53
    assert details["roles"] == {
        "broker": {"features": {"pattern_based_subscription": True, "publisher_exclusion": True,
                                "publisher_identification": True, "subscriber_blackwhite_listing": True,
                                "event_retention": True, "session_meta_api": True, "subscription_meta_api": True}},
        "dealer": {"features": {"caller_identification": True, "progressive_call_results": True,
                                "call_timeout": True, "call_canceling": True, "shared_registration": True,
                                "pattern_based_registration": True, "session_meta_api": True,
                                "registration_meta_api": True}},
    }
    assert (details["realm"], details["authmethod"], details["authrole"]) == ("eform", "ticket", "admin")


@pytest_twisted.ensureDeferred
async def test_event_is_subscription_publication_empty_details_and_the_envelope(server):
    client, _ = await join(server)
    await client.send([SUBSCRIBE, 1, {}, "eform.lockers"])
    subscribed = await client.recv()
    assert subscribed[:2] == [SUBSCRIBED, 1]
    await server.service.events.broadcast("/ws/lockers", "maintenance", {"minutes": 5})
    event = await client.recv()
    assert event[0] == EVENT and event[1] == subscribed[2] and isinstance(event[2], int)
    assert event[3] == {}
    (envelope,) = event[4]
    assert (envelope["type"], envelope["data"], envelope["namespace"]) == ("maintenance", {"minutes": 5}, "/ws/lockers")
    assert len(event) == 5


@pytest_twisted.ensureDeferred
async def test_msgpack_event_carries_the_same_envelope(server):
    client = await connect(server, "wamp.2.msgpack")
    sid = await server.session()
    await client.send(msgpack.packb([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}]))
    assert msgpack.unpackb(await client.recv_raw()) == [CHALLENGE, "ticket", {}]
    await client.send(msgpack.packb([AUTHENTICATE, sid, {}]))
    assert msgpack.unpackb(await client.recv_raw())[0] == WELCOME
    await client.send(msgpack.packb([SUBSCRIBE, 1, {"match": "prefix"}, "eform.lockers"]))
    subscription = msgpack.unpackb(await client.recv_raw())[2]
    await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "door", {"open": True})
    event = msgpack.unpackb(await client.recv_raw())
    assert event[:2] == [EVENT, subscription] and event[3] == {"topic": "eform.lockers.kiosk-1"}
    assert event[4][0]["data"] == {"open": True} and event[4][0]["room"] == "kiosk-1"


@pytest_twisted.ensureDeferred
async def test_cbor_event_carries_the_same_envelope(server):
    client = await connect(server, "wamp.2.cbor")
    sid = await server.session()
    await client.send(cbor2.dumps([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}]))
    assert cbor2.loads(await client.recv_raw()) == [CHALLENGE, "ticket", {}]
    await client.send(cbor2.dumps([AUTHENTICATE, sid, {}]))
    assert cbor2.loads(await client.recv_raw())[0] == WELCOME
    await client.send(cbor2.dumps([SUBSCRIBE, 1, {"match": "prefix"}, "eform.lockers"]))
    subscription = cbor2.loads(await client.recv_raw())[2]
    await server.service.events.broadcast_to_room("/ws/lockers", "kiosk-1", "door", {"open": True})
    event = cbor2.loads(await client.recv_raw())
    assert event[:2] == [EVENT, subscription] and event[3] == {"topic": "eform.lockers.kiosk-1"}
    assert event[4][0]["data"] == {"open": True} and event[4][0]["room"] == "kiosk-1"


# -- protocol errors: ABORT wamp.error.protocol_violation, then close ------------------------


@pytest_twisted.ensureDeferred
async def test_a_request_before_hello_is_a_protocol_violation(server):
    client = await connect(server)
    await client.send([SUBSCRIBE, 1, {}, "eform.lockers"])
    details = await assert_aborted(client, "wamp.error.protocol_violation")
    assert details["message"] == "SUBSCRIBE before HELLO"


@pytest_twisted.ensureDeferred
async def test_invalid_json_is_a_protocol_violation(server):
    client = await connect(server)
    await client.send("[1, 'eform'")
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_a_binary_frame_on_the_json_subprotocol_is_a_protocol_violation(server):
    client = await connect(server)
    await client.send(json.dumps([HELLO, "eform", {"roles": ROLES}]).encode())
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_invalid_msgpack_is_a_protocol_violation(server):
    client = await connect(server, "wamp.2.msgpack")
    await client.send(b"\xc1")  # a byte MessagePack never uses
    abort = msgpack.unpackb(await client.recv_raw())
    assert abort[0] == ABORT and abort[2] == "wamp.error.protocol_violation"
    assert (await client.closed())[0] == 1002


@pytest_twisted.ensureDeferred
async def test_a_message_that_is_not_an_array_is_a_protocol_violation(server):
    client = await connect(server)
    await client.send({"type": "hello"})
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_an_unknown_message_type_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([999, 1, {}])
    details = await assert_aborted(client, "wamp.error.protocol_violation")
    assert details["message"] == "unknown WAMP message type 999"


@pytest_twisted.ensureDeferred
async def test_a_malformed_subscribe_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([SUBSCRIBE, "one", {}, "eform.lockers"])
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_a_second_hello_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([HELLO, "eform", {"roles": ROLES}])
    details = await assert_aborted(client, "wamp.error.protocol_violation")
    assert details["message"] == "HELLO is not a message a client sends in a session"


@pytest_twisted.ensureDeferred
async def test_a_router_message_sent_by_a_client_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([EVENT, 1, 2, {}, []])
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_a_message_other_than_authenticate_after_challenge_is_a_protocol_violation(server):
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    await client.send([CALL, 1, {}, "eform.status"])
    details = await assert_aborted(client, "wamp.error.protocol_violation")
    assert details["message"] == "CALL instead of AUTHENTICATE"


SMALL_MESSAGES = {"wamp.max_message_bytes": 10_000}


@pytest_twisted.ensureDeferred
async def test_a_call_over_the_size_limit_is_answered_payload_size_exceeded_and_the_session_goes_on(start_server):
    client, _ = await join(await start_server(SMALL_MESSAGES))
    await client.send([CALL, 1, {}, "eform.status", ["x" * 15_000]])
    error = await client.recv()
    assert error[:5] == [ERROR, CALL, 1, {}, "wamp.error.payload_size_exceeded"]
    assert "over the limit of 10000" in error[5][0]
    await client.send([CALL, 2, {}, "eform.status"])
    assert (await client.recv())[:2] == [RESULT, 2]


@pytest_twisted.ensureDeferred
async def test_an_acknowledged_publish_over_the_size_limit_is_answered_payload_size_exceeded(start_server):
    client, _ = await join(await start_server(SMALL_MESSAGES))
    await client.send([PUBLISH, 1, {"acknowledge": True}, "app.big", ["x" * 15_000]])
    assert (await client.recv())[:5] == [ERROR, PUBLISH, 1, {}, "wamp.error.payload_size_exceeded"]


@pytest_twisted.ensureDeferred
async def test_another_message_over_the_size_limit_is_aborted(start_server):
    client, _ = await join(await start_server(SMALL_MESSAGES))
    await client.send([SUBSCRIBE, 1, {"x": "y" * 15_000}, "app.topic"])
    details = await assert_aborted(client, "wamp.error.protocol_violation")
    assert "over the limit of 10000" in details["message"]


@pytest_twisted.ensureDeferred
async def test_a_message_over_twice_the_size_limit_closes_1009_unread(start_server):
    client, _ = await join(await start_server(SMALL_MESSAGES))
    await client.send([CALL, 1, {}, "eform.status", ["x" * 25_000]])
    kind, (code, _) = await next_or_close(client)
    assert (kind, code) == ("closed", 1009)


@pytest_twisted.ensureDeferred
async def test_a_hundred_pipelined_calls_are_all_answered_under_the_default_limits(server):
    client, _ = await join(server)
    for request in range(1, 101):
        await client.send([CALL, request, {}, "eform.status"])
    answers = [await client.recv() for _ in range(100)]
    assert [(answer[0], answer[1]) for answer in answers] == [(RESULT, request) for request in range(1, 101)]


# -- bad URIs ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_invalid_realm_uri_is_aborted_invalid_uri(server):
    client = await connect(server)
    await client.send([HELLO, "not a realm", {"roles": ROLES}])
    await assert_aborted(client, "wamp.error.invalid_uri", code=1000)


@pytest_twisted.ensureDeferred
async def test_an_invalid_topic_uri_is_an_error_and_the_session_goes_on(server):
    client, _ = await join(server)
    await client.send([SUBSCRIBE, 1, {}, "eform lockers"])
    error = await client.recv()
    assert error[:5] == [ERROR, SUBSCRIBE, 1, {}, "wamp.error.invalid_uri"]
    await client.send([SUBSCRIBE, 2, {}, "eform.lockers"])
    assert (await client.recv())[:2] == [SUBSCRIBED, 2]


@pytest_twisted.ensureDeferred
async def test_an_exact_topic_with_an_empty_component_is_invalid_uri(server):
    client, _ = await join(server)
    await client.send([SUBSCRIBE, 1, {}, "eform..lockers"])
    assert (await client.recv())[:5] == [ERROR, SUBSCRIBE, 1, {}, "wamp.error.invalid_uri"]


@pytest_twisted.ensureDeferred
async def test_an_invalid_procedure_uri_is_an_error(server):
    client, _ = await join(server)
    await client.send([CALL, 7, {}, "eform status"])
    assert (await client.recv())[:5] == [ERROR, CALL, 7, {}, "wamp.error.invalid_uri"]


# -- other refusals ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unsubscribing_an_unknown_subscription_is_no_such_subscription(server):
    client, _ = await join(server)
    await client.send([UNSUBSCRIBE, 3, 12345])
    assert (await client.recv())[:5] == [ERROR, UNSUBSCRIBE, 3, {}, "wamp.error.no_such_subscription"]


@pytest_twisted.ensureDeferred
async def test_an_unacknowledged_refused_publish_gets_no_answer(server):
    client, _ = await join(server, role="staff")
    await client.send([PUBLISH, 1, {}, "eform.lockers", ["x", {}]])
    await client.send([CALL, 2, {}, "eform.status"])
    result = await client.recv()
    assert result[:3] == [RESULT, 2, {}] and result[3][0]["status"] == "active"


# -- ending sessions -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_peer_abort_closes_the_transport(server):
    client, _ = await join(server)
    await client.send([ABORT, {}, "wamp.close.normal"])
    assert (await client.closed())[0] == 1000
    assert server.hub.connection_count("/wamp") == 0


@pytest_twisted.ensureDeferred
async def test_a_dropped_transport_leaves_no_session_and_no_subscription(server):
    client, _ = await join(server)
    await client.send([SUBSCRIBE, 1, {"match": "prefix"}, "eform"])
    assert (await client.recv())[:2] == [SUBSCRIBED, 1]
    (connection,) = server.service.wamp.connections.values()
    closed = connection.closed
    client.connection.transport.abort()
    await closed
    assert server.hub.connection_count("/wamp") == 0
    assert server.service.wamp.broker.subscription_count == 0


@pytest_twisted.ensureDeferred
async def test_after_goodbye_the_transport_carries_a_new_session(server):
    client, welcome = await join(server)
    await client.send([GOODBYE, {}, "wamp.close.close_realm"])
    assert await client.recv() == [GOODBYE, {}, "wamp.close.goodbye_and_out"]
    sid = await server.session()
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    await client.send([AUTHENTICATE, sid, {}])
    again = await client.recv()
    assert again[0] == WELCOME and again[1] != welcome[1]


@pytest_twisted.ensureDeferred
async def test_after_the_routers_goodbye_requests_are_ignored_until_the_answer(server):
    client, _ = await join(server)
    server.hub.close_all(1001, "Server shutdown")
    assert await client.recv() == [GOODBYE, {"message": "Server shutdown"}, "wamp.close.system_shutdown"]
    await client.send([CALL, 1, {}, "eform.status"])
    await client.send([GOODBYE, {}, "wamp.close.goodbye_and_out"])
    assert await next_or_close(client) == ("closed", (1001, "Server shutdown"))


@pytest_twisted.ensureDeferred
async def test_a_transport_without_hello_is_closed_after_the_open_handshake_timeout(start_server):
    server = await start_server({"websocket.open_handshake_timeout": 0.2})
    client = await connect(server)
    assert await next_or_close(client) == ("closed", (1000, "No session in time"))


@pytest_twisted.ensureDeferred
async def test_an_unanswered_challenge_is_closed_after_the_open_handshake_timeout(start_server):
    server = await start_server({"websocket.open_handshake_timeout": 0.2})
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    assert await next_or_close(client) == ("closed", (1000, "No session in time"))


@pytest_twisted.ensureDeferred
async def test_welcome_stops_the_open_handshake_timer(start_server):
    server = await start_server({"websocket.open_handshake_timeout": 0.2})
    await join(server)
    (connection,) = server.service.wamp.connections.values()
    assert connection._timer is None


# -- limits shared with the legacy namespaces ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wamp_handshakes_count_against_the_connection_limit_with_the_namespaces(start_server):
    server = await start_server({"server.max_connections": 2})
    legacy = await server.join("/ws/lockers", await server.session())
    await connect(server)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await server.connect("/wamp", subprotocols=["wamp.2.json"])
    assert refused.value.response.status_code == 503
    await legacy.close()


@pytest_twisted.ensureDeferred
async def test_calls_over_the_rate_limit_get_error_rate_limited(start_server):
    server = await start_server({"wamp.rate_limit": 1, "wamp.rate_burst": 4,  # HELLO, AUTHENTICATE, then 2
                                 "wamp.rate_limit_close_after": 100})
    client, _ = await join(server)
    for request in (1, 2, 3):
        await client.send([CALL, request, {}, "eform.status"])
    answers = [await client.recv() for _ in range(3)]
    assert [answer[0] for answer in answers] == [RESULT, RESULT, ERROR]
    assert answers[2][:5] == [ERROR, CALL, 3, {}, "eform.error.rate_limited"]
    assert answers[2][5] == ["Rate limit exceeded: at most 1 messages per second"]


# a token a second, a burst of 4 (HELLO, AUTHENTICATE, then 2), closed after 5 refusals in a row
FLOOD_LIMITS = {"wamp.rate_limit": 1, "wamp.rate_burst": 4, "wamp.rate_limit_close_after": 5}


@pytest_twisted.ensureDeferred
async def test_a_sustained_wamp_flood_is_closed_1008_rate_limit_exceeded(start_server):
    server = await start_server(FLOOD_LIMITS)
    client, _ = await join(server)
    replies, close = await client.flood([json.dumps([CALL, n, {}, "eform.status"]) for n in range(1, 30)])
    assert [reply[0] for reply in replies] == [RESULT, RESULT] + [ERROR] * 4
    assert close == (1008, "Rate limit exceeded")


@pytest_twisted.ensureDeferred
async def test_requests_with_an_invalid_uri_spend_the_rate_limit_too(start_server):
    server = await start_server(FLOOD_LIMITS)
    client, _ = await join(server)
    replies, close = await client.flood([json.dumps([SUBSCRIBE, n, {}, "eform..bad"]) for n in range(1, 30)])
    assert [reply[4] for reply in replies] == ["wamp.error.invalid_uri"] * 2 + ["eform.error.rate_limited"] * 4
    assert close == (1008, "Rate limit exceeded")


@pytest_twisted.ensureDeferred
async def test_opening_sessions_in_a_loop_spends_the_rate_limit(start_server):
    server = await start_server({"wamp.rate_limit": 0.1, "wamp.rate_burst": 10,
                                 "wamp.rate_limit_close_after": 5})
    session_id = await server.session()
    client = await server.connect("/wamp", subprotocols=["wamp.2.json"])
    welcomed = 0
    while True:  # HELLO, AUTHENTICATE, GOODBYE: each opening a session-store lookup and a log line
        await client.send([1, "eform", {"roles": {"caller": {}}, "authmethods": ["ticket"]}])
        try:
            challenge = await client.recv(timeout=0.5)
        except asyncio.TimeoutError:
            continue  # over the limit: dropped; past 5 in a row the transport closes
        except websockets.exceptions.ConnectionClosed:
            break
        assert challenge[0] == 4, challenge
        await client.send([5, session_id, {}])
        assert (await client.recv())[0] == 2
        welcomed += 1
        await client.send([6, {}, "wamp.close.normal"])
        assert (await client.recv())[0] == 6
    assert client.connection.protocol.close_rcvd.code == 1008
    assert welcomed == 5  # the burst of 10 tokens: 2 for each opening


# -- a callee's answers ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_yield_to_no_invocation_of_the_session_is_ignored_and_the_session_goes_on(server):
    client, _ = await join(server)
    await client.send([YIELD, 12345, {}, ["made up"]])
    await client.send([CALL, 1, {}, "eform.status"])
    answer = await client.recv()
    assert answer[:2] == [RESULT, 1]


@pytest_twisted.ensureDeferred
async def test_an_error_to_anything_but_an_invocation_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([ERROR, CALL, 1, {}, "app.error.nope"])
    await assert_aborted(client, "wamp.error.protocol_violation")


CALLEE = {"callee": {"features": {"call_canceling": True}}}
REGISTER, REGISTERED, INVOCATION, CANCEL, INTERRUPT = 64, 65, 68, 49, 69


async def invoked(server):
    """A raw callee (announcing call canceling) of app.slow and a raw caller whose CALL 7
    reached it: (caller, callee, the INVOCATION's request id)."""
    callee, _ = await join(server, roles=CALLEE)
    await callee.send([REGISTER, 1, {}, "app.slow"])
    registered = await callee.recv()
    assert registered[:2] == [REGISTERED, 1], registered
    caller, _ = await join(server, role="staff")
    await caller.send([CALL, 7, {}, "app.slow", ["x"]])
    invocation = await callee.recv()
    assert invocation[0] == INVOCATION and invocation[2] == registered[2] and invocation[4] == ["x"], invocation
    return caller, callee, invocation[1]


@pytest_twisted.ensureDeferred
async def test_cancel_skip_answers_the_caller_canceled_at_once_and_the_callee_is_not_told(server):
    caller, callee, invocation = await invoked(server)
    await caller.send([CANCEL, 7, {"mode": "skip"}])
    assert (await caller.recv())[:5] == [ERROR, CALL, 7, {}, "wamp.error.canceled"]
    await callee.send([YIELD, invocation, {}, ["late"]])  # its answer goes nowhere
    await caller.send([CALL, 8, {}, "eform.status"])
    assert (await caller.recv())[:2] == [RESULT, 8]  # and nothing came before it


@pytest_twisted.ensureDeferred
async def test_cancel_kill_interrupts_the_callee_and_its_answer_is_the_callers(server):
    caller, callee, invocation = await invoked(server)
    await caller.send([CANCEL, 7, {"mode": "kill"}])
    assert await callee.recv() == [INTERRUPT, invocation, {"mode": "kill", "reason": "wamp.error.canceled"}]
    await callee.send([ERROR, INVOCATION, invocation, {}, "wamp.error.canceled", ["stopped"]])
    assert await caller.recv() == [ERROR, CALL, 7, {}, "wamp.error.canceled", ["stopped"]]


@pytest_twisted.ensureDeferred
async def test_a_call_in_payload_passthru_mode_is_a_protocol_violation(server):
    client, _ = await join(server)
    await client.send([CALL, 1, {"enc_algo": "cryptobox"}, "app.anything", "an opaque payload"])
    await assert_aborted(client, "wamp.error.protocol_violation")


@pytest_twisted.ensureDeferred
async def test_past_a_thousand_calls_in_flight_a_call_is_refused_call_limit(server):
    caller, callee, _ = await invoked(server)  # call 7 is in flight
    for request in range(100, 1099):
        await caller.send([CALL, request, {}, "app.slow"])
    await caller.send([CALL, 2000, {}, "app.slow"])
    refused = await caller.recv()
    assert refused[:5] == [ERROR, CALL, 2000, {}, "eform.error.call_limit"] and refused[6] == {"limit": 1000}


@pytest_twisted.ensureDeferred
async def test_large_messages_spend_the_rate_limit_by_size_before_they_are_read(start_server):
    # one token a message, and one for each 4 KiB past the first: a burst of 40 tokens is ~160 KiB
    server = await start_server({"wamp.rate_limit": 1, "wamp.rate_burst": 40, "wamp.rate_limit_close_after": 100})
    client, _ = await join(server)
    await client.send([CALL, 1, {}, "eform.status", ["x" * 60_000]])  # 14 + 1 tokens: answered
    assert (await client.recv())[:5] == [ERROR, CALL, 1, {}, "wamp.error.invalid_argument"]  # read and answered
    await client.send([CALL, 2, {}, "eform.status", ["x" * 200_000]])  # 48 tokens: more than are left
    kind, (code, reason) = await next_or_close(client)
    assert (kind, code, reason) == ("closed", 1008, "Rate limit exceeded")


# -- what each refusal says (found by a mutation survey: each fails on a mutant that passed) ---------


@pytest_twisted.ensureDeferred
async def test_unsubscribing_another_sessions_subscription_is_no_such_subscription_and_keeps_it(server):
    owner, _ = await join(server)
    await owner.send([SUBSCRIBE, 1, {}, "app.news"])
    subscribed = await owner.recv()
    other, _ = await join(server)
    await other.send([UNSUBSCRIBE, 2, subscribed[2]])
    assert (await other.recv())[:5] == [ERROR, UNSUBSCRIBE, 2, {}, "wamp.error.no_such_subscription"]
    assert server.service.wamp.broker.subscription(subscribed[2]).connections  # the owner's is kept


@pytest.mark.parametrize(("publish", "says"), [
    ([PUBLISH, 1, {"acknowledge": True}, "eform.lockers." + "r" * 129, ["notice", {}]], "Room must be at most 128 characters"),
    ([PUBLISH, 1, {"acknowledge": True}, "eform.lockers", ["notice", {}, "extra"]], "publish args"),
    ([PUBLISH, 1, {"acknowledge": True, "retain": True}, "eform.lockers", ["notice", {}]], "retain"),
    ([PUBLISH, 1, {"acknowledge": True, "eligible": [1]}, "eform.lockers", ["notice", {}]], "eligible"),
])
@pytest_twisted.ensureDeferred
async def test_an_admin_publish_to_a_namespace_the_router_cannot_carry_is_invalid_argument(server, publish, says):
    client, _ = await join(server, role="admin")
    await client.send(publish)
    error = await client.recv()
    assert error[:5] == [ERROR, PUBLISH, 1, {}, "wamp.error.invalid_argument"]
    assert says in error[5][0]


@pytest.mark.parametrize(("args", "kwargs", "says"), [
    (["locker_state_changed", {}, "key", "more"], {}, "too many arguments"),
    (["locker_state_changed"], {"data": {}, "colour": "red"}, "unknown argument 'colour'"),
    (["locker_state_changed", {}], {"data": {}}, "data given twice"),
    ([], {"data": {}}, "missing argument 'type'"),
    (["locker_state_changed", {}], {"idempotency_key": 7}, "idempotency_key must be a string"),
])
@pytest_twisted.ensureDeferred
async def test_eform_emit_with_arguments_that_do_not_bind_is_invalid_argument_saying_which(server, args, kwargs, says):
    client, _ = await join(server, role="admin")
    await client.send([CALL, 3, {}, "eform.emit", args, kwargs])
    error = await client.recv()
    assert error[:5] == [ERROR, CALL, 3, {}, "wamp.error.invalid_argument"]
    assert says in error[5][0], error


@pytest_twisted.ensureDeferred
async def test_eform_emit_while_the_event_log_is_out_of_reach_is_unavailable(server, monkeypatch):
    from twisted.internet.defer import fail

    from eformws.backends.redis import RedisUnavailable

    client, _ = await join(server, role="admin")
    monkeypatch.setattr(server.service.events, "emit",
                        lambda *args, **kwargs: fail(RedisUnavailable("redis writes: connection lost")))
    await client.send([CALL, 4, {}, "eform.emit", ["locker_state_changed", {}]])
    assert (await client.recv())[:5] == [ERROR, CALL, 4, {}, "eform.error.unavailable"]


@pytest_twisted.ensureDeferred
async def test_an_answer_to_a_session_that_ended_is_not_given_to_the_next_session_on_the_transport(server):
    from twisted.internet.defer import Deferred

    client, _ = await join(server, role="admin")
    held = Deferred()
    server.service.wamp.dealer._procedures["eform.status"] = (lambda args, kwargs: held, False)
    await client.send([CALL, 5, {}, "eform.status"])
    await client.send([GOODBYE, {}, "wamp.close.close_realm"])
    assert await client.recv() == [GOODBYE, {}, "wamp.close.goodbye_and_out"]
    sid = await server.session()
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    await client.send([AUTHENTICATE, sid, {}])
    assert (await client.recv())[0] == WELCOME
    held.callback(["for the session that left"])
    await client.send([CALL, 6, {}, "wamp.session.count"])
    assert (await client.recv())[:2] == [RESULT, 6]  # and not RESULT 5 first


@pytest_twisted.ensureDeferred
async def test_an_abort_answering_the_routers_goodbye_closes_at_once_with_the_routers_code(start_server):
    server = await start_server({"websocket.close_handshake_timeout": 30})
    client, _ = await join(server)
    server.hub.close_all(1001, "Server shutdown")
    assert await client.recv() == [GOODBYE, {"message": "Server shutdown"}, "wamp.close.system_shutdown"]
    await client.send([ABORT, {}, "wamp.close.normal"])
    assert await next_or_close(client) == ("closed", (1001, "Server shutdown"))  # not after 30 s


@pytest_twisted.ensureDeferred
async def test_a_ticket_whose_lookup_is_answered_after_the_client_left_opens_no_session(server, monkeypatch):
    from twisted.internet.defer import Deferred

    from eformws.transports.wamp.session import RouterSession

    session = await server.service.sessions.lookup(await server.session())
    asked = Deferred()  # fires with (the connection, the lookup's answer to give later)

    def slow_lookup(self, candidates=(), hashed=None):
        answer = Deferred()
        asked.callback((self.connection, answer))
        return answer

    monkeypatch.setattr(RouterSession, "_lookup", slow_lookup)
    client = await connect(server)
    await client.send([HELLO, "eform", {"roles": ROLES, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    await client.send([AUTHENTICATE, "a ticket", {}])
    connection, answer = await within(asked)
    client.connection.transport.abort()
    await within(connection.closed)
    answer.callback(session)  # a valid session, too late
    assert server.service.wamp.connections == {} and server.hub.connection_count("/wamp") == 0
