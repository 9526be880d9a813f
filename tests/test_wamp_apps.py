"""WAMP between clients (docs/wamp.md, "Applications"): stock Autobahn|Python sessions
publish, subscribe, register and call on an application's URIs (`app.*` by default) as the
permission table allows, payloads untouched; `eform.*` stays the router's own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from autobahn.exception import PayloadExceededError
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallDetails, CallOptions, PublishOptions, RegisterOptions, SubscribeOptions
from conftest import within
from js_peers import JS_DIR, NODE, Lines, needs_node
from logcheck import logged_problems  # noqa: F401  (autouse: no error in the log)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from wamp_peer import call_error, join, subscribe

ACKNOWLEDGED = PublishOptions(acknowledge=True)


async def leave(*peers) -> None:
    for peer in peers:
        peer.leave()
        await within(peer.gone)


# -- pub/sub ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("publisher_serializer", "subscriber_serializer"),
                         [("json", "msgpack"), ("msgpack", "json"), ("cbor", "json"), ("msgpack", "cbor")])
@pytest_twisted.ensureDeferred
async def test_a_publication_reaches_a_subscriber_with_its_args_and_kwargs_untouched(
        server, publisher_serializer, subscriber_serializer):
    subscriber = await join(server, subscriber_serializer, role="staff", user="sam")
    publisher = await join(server, publisher_serializer, role="admin", user="ada")
    inbox, _ = await subscribe(subscriber, "app.orders.created")
    await within(publisher.publish("app.orders.created", 1, "two", [3.5], {"four": None}, total=12,
                                   lines={"a": [1, 2]}, options=ACKNOWLEDGED))
    args, kwargs, details = await inbox.next_publication()
    assert args == (1, "two", [3.5], {"four": None})
    assert kwargs == {"total": 12, "lines": {"a": [1, 2]}}
    await leave(subscriber, publisher)


@pytest_twisted.ensureDeferred
async def test_a_subscriber_learns_who_published_as_the_default_table_discloses_it(server):
    subscriber = await join(server, role="staff", user="sam")
    publisher = await join(server, role="admin", user="ada")
    inbox, _ = await subscribe(subscriber, "app.", match="prefix")
    await within(publisher.publish("app.orders.created", "x", options=ACKNOWLEDGED))
    _, _, details = await inbox.next_publication()
    assert (details.topic, details.publisher, details.publisher_authid, details.publisher_authrole) == (
        "app.orders.created", publisher.session_id, "ada", "admin")
    await leave(subscriber, publisher)


@pytest_twisted.ensureDeferred
async def test_the_publisher_gets_its_own_publication_only_when_it_says_exclude_me_false(server):
    publisher = await join(server, role="staff")
    inbox, _ = await subscribe(publisher, "app.chat")
    await within(publisher.publish("app.chat", "not to me", options=ACKNOWLEDGED))
    await within(publisher.publish("app.chat", "to me too", options=PublishOptions(acknowledge=True, exclude_me=False)))
    args, _, _ = await inbox.next_publication()
    assert args == ("to me too",)
    assert inbox.empty
    await leave(publisher)


@pytest_twisted.ensureDeferred
async def test_eligible_and_exclude_lists_pick_the_subscribers_by_session_authid_and_authrole(server):
    publisher = await join(server, role="admin", user="ada")
    staff_a = await join(server, role="staff", user="sam")
    staff_b = await join(server, role="staff", user="tom")
    admin = await join(server, role="admin", user="al")
    inboxes = {}
    for name, peer in (("sam", staff_a), ("tom", staff_b), ("al", admin)):
        inboxes[name], _ = await subscribe(peer, "app.notice")
    cases = [
        (PublishOptions(acknowledge=True, eligible=[staff_a.session_id]), {"sam"}),
        (PublishOptions(acknowledge=True, exclude=[staff_a.session_id]), {"tom", "al"}),
        (PublishOptions(acknowledge=True, eligible_authrole=["staff"]), {"sam", "tom"}),
        (PublishOptions(acknowledge=True, exclude_authid=["tom"]), {"sam", "al"}),
        (PublishOptions(acknowledge=True, eligible_authrole=["staff"], exclude_authid=["sam"]), {"tom"}),
    ]
    for n, (options, expected) in enumerate(cases):
        await within(publisher.publish("app.notice", n, options=options))
        await within(publisher.publish("app.notice", "end", n, options=PublishOptions(acknowledge=True)))
        got = set()
        for name, inbox in inboxes.items():
            args, _, _ = await inbox.next_publication()
            if args == (n,):
                got.add(name)
                args, _, _ = await inbox.next_publication()
            assert args == ("end", n)
        assert got == expected, (n, got)
    await leave(publisher, staff_a, staff_b, admin)


@pytest_twisted.ensureDeferred
async def test_a_kiosk_may_not_subscribe_to_an_applications_topics_by_default(server):
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    error = await call_error(kiosk.subscribe(print, "app.orders.created"))
    assert error.error == "wamp.error.not_authorized"
    error = await call_error(kiosk.subscribe(print, "app.", options=SubscribeOptions(match="prefix")))
    assert error.error == "wamp.error.not_authorized"
    inbox, _ = await subscribe(kiosk, "eform.lockers.kiosk-1")  # its own topics as before
    await leave(kiosk)


@pytest_twisted.ensureDeferred
async def test_an_acknowledged_publish_a_role_may_not_make_is_answered_not_authorized(server):
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    error = await call_error(kiosk.publish("app.orders.created", 1, options=ACKNOWLEDGED))
    assert error.error == "wamp.error.not_authorized"
    error = await call_error(kiosk.publish("other.topic", 1, options=ACKNOWLEDGED))
    assert error.error == "wamp.error.not_authorized"
    await leave(kiosk)


@pytest_twisted.ensureDeferred
async def test_an_unacknowledged_refused_publish_is_counted(server):
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    before = await refused_publications(server)
    kiosk.publish("app.orders.created", 1)  # Autobahn's default: no answer either way
    await within(kiosk.call("eform.status"))  # answered after the PUBLISH was handled
    assert await refused_publications(server) == before + 1
    await leave(kiosk)


async def refused_publications(server) -> float:
    response = await treq.get(server.http("/metrics"), persistent=False)
    text = (await response.content()).decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "eformws_wamp_refused_publications_total")


# -- remote procedure calls -------------------------------------------------------------------


@pytest.mark.parametrize(("caller_serializer", "callee_serializer"),
                         [("json", "msgpack"), ("msgpack", "json"), ("cbor", "msgpack"), ("json", "cbor")])
@pytest_twisted.ensureDeferred
async def test_a_call_reaches_the_callee_and_its_result_comes_back_untouched(
        server, caller_serializer, callee_serializer):
    callee = await join(server, callee_serializer, role="admin", user="ada")
    caller = await join(server, caller_serializer, role="staff", user="sam")

    def add(*args, **kwargs):
        from autobahn.wamp.types import CallResult

        return CallResult(sum(args), "sum", echoed=kwargs)

    await within(callee.register(add, "app.math.add"))
    result = await within(caller.call("app.math.add", 1, 2, 3.5, note={"x": [1]}))
    assert (list(result.results), result.kwresults) == ([6.5, "sum"], {"echoed": {"note": {"x": [1]}}})
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_the_callee_learns_who_calls_as_the_default_table_discloses_it(server):
    callee = await join(server, role="admin", user="ada")
    caller = await join(server, role="staff", user="sam")
    seen: list[CallDetails] = []

    def who(details=None):
        seen.append(details)
        return "ok"

    await within(callee.register(who, "app.who", options=RegisterOptions(details_arg="details")))
    assert await within(caller.call("app.who")) == "ok"
    assert (seen[0].caller, seen[0].caller_authid, seen[0].caller_authrole) == (caller.session_id, "sam", "staff")
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_callees_error_reaches_the_caller_with_its_uri_args_and_kwargs(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")

    def refuse():
        raise ApplicationError("app.error.out_of_stock", "no more", 3, sku="A-1")

    await within(callee.register(refuse, "app.order"))
    error = await call_error(caller.call("app.order"))
    assert (error.error, error.args, error.kwargs) == ("app.error.out_of_stock", ("no more", 3), {"sku": "A-1"})
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_procedure_registered_already_is_refused_procedure_already_exists(server):
    first = await join(server, role="admin")
    second = await join(server, role="staff")
    await within(first.register(lambda: 1, "app.one"))
    error = await call_error(second.register(lambda: 2, "app.one"))
    assert error.error == "wamp.error.procedure_already_exists"
    await leave(first, second)


@pytest_twisted.ensureDeferred
async def test_after_unregister_a_call_is_no_such_procedure_and_another_session_may_register(server):
    first = await join(server, role="admin")
    second = await join(server, role="staff")
    registration = await within(first.register(lambda: 1, "app.one"))
    await within(registration.unregister())
    error = await call_error(second.call("app.one"))
    assert error.error == "wamp.error.no_such_procedure"
    await within(second.register(lambda: 2, "app.one"))
    assert await within(first.call("app.one")) == 2
    await leave(first, second)


@pytest_twisted.ensureDeferred
async def test_a_call_whose_callee_leaves_before_answering_fails_canceled(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    invoked, never = Deferred(), Deferred()

    def slow():
        invoked.callback(None)
        return never  # answers only once the test lets it

    await within(callee.register(slow, "app.slow"))
    call = caller.call("app.slow")
    await within(invoked)
    await leave(callee)
    error = await call_error(call)
    assert error.error == "wamp.error.canceled"
    await leave(caller)


@pytest_twisted.ensureDeferred
async def test_a_procedure_registered_by_a_session_that_ended_is_gone(server):
    callee = await join(server, role="admin")
    await within(callee.register(lambda: 1, "app.one"))
    await leave(callee)
    caller = await join(server, role="staff")
    error = await call_error(caller.call("app.one"))
    assert error.error == "wamp.error.no_such_procedure"
    await leave(caller)


@pytest.mark.parametrize("procedure", ["eform.status", "eform.mine"])
@pytest_twisted.ensureDeferred
async def test_no_client_may_register_a_procedure_of_the_routers_own(server, procedure):
    admin = await join(server, role="admin")
    error = await call_error(admin.register(lambda: 1, procedure))
    assert error.error == "wamp.error.not_authorized"
    await leave(admin)


@pytest_twisted.ensureDeferred
async def test_a_kiosk_may_neither_register_nor_call_an_applications_procedures_by_default(server):
    admin = await join(server, role="admin")
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    await within(admin.register(lambda: 1, "app.one"))
    assert (await call_error(kiosk.call("app.one"))).error == "wamp.error.not_authorized"
    assert (await call_error(kiosk.register(lambda: 2, "app.two"))).error == "wamp.error.not_authorized"
    await leave(admin, kiosk)


@pytest_twisted.ensureDeferred
async def test_the_permission_table_of_the_configuration_decides(start_server):
    server = await start_server({"wamp.permissions": [
        {"uri": "kiosk.", "match": "prefix", "roles": ["kiosk"], "allow": ["call"]},
        {"uri": "kiosk.", "match": "prefix", "roles": ["admin"], "allow": ["register"], "disclose": False},
    ]})
    admin = await join(server, role="admin")
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    seen = []

    def unlock(locker, details=None):
        seen.append(details.caller)
        return f"unlocked {locker}"

    await within(admin.register(unlock, "kiosk.unlock", options=RegisterOptions(details_arg="details")))
    assert await within(kiosk.call("kiosk.unlock", 12)) == "unlocked 12"
    assert seen == [None]  # the kiosk's entry does not disclose it
    assert (await call_error(admin.register(lambda: 1, "app.one"))).error == "wamp.error.not_authorized"
    await leave(admin, kiosk)


# -- progressive results, timeouts, canceling -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_progressive_results_reach_the_caller_in_order_before_the_final_result(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")

    def count(n, details=None):
        for i in range(n):
            details.progress(i, step="counting")
        return "done"

    await within(callee.register(count, "app.count", options=RegisterOptions(details_arg="details")))
    progress = []
    result = await within(caller.call("app.count", 3, options=CallOptions(
        on_progress=lambda *args, **kwargs: progress.append((args, kwargs)))))
    assert progress == [((i,), {"step": "counting"}) for i in range(3)]
    assert result == "done"
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_progressive_results_a_caller_did_not_ask_for_are_not_sent_to_it(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    asked = []

    def count(details=None):
        asked.append(details.progress)
        return "done"

    await within(callee.register(count, "app.count", options=RegisterOptions(details_arg="details")))
    assert await within(caller.call("app.count")) == "done"
    assert asked == [None]  # the INVOCATION did not offer progressive results
    await leave(callee, caller)


async def pending_procedure(callee, name):
    """Register `name` answering only when canceled; fires (invoked, interrupted)."""
    invoked, interrupted = Deferred(), Deferred()

    def interrupt(answer):
        interrupted.callback(None)
        answer.errback(ApplicationError("wamp.error.canceled"))  # what a callee answers an INTERRUPT

    def slow():
        invoked.callback(None)
        return Deferred(interrupt)

    await within(callee.register(slow, name))
    return invoked, interrupted


@pytest_twisted.ensureDeferred
async def test_a_call_past_its_timeout_fails_timeout_and_the_callee_is_interrupted(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    error = await call_error(caller.call("app.slow", options=CallOptions(timeout=200)))  # milliseconds, as WAMP says
    assert error.error == "wamp.error.timeout"
    await within(invoked)
    await within(interrupted)
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_canceled_call_interrupts_the_callee_and_the_caller_goes_on(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    call = caller.call("app.slow")
    await within(invoked)
    call.cancel()  # Autobahn sends CANCEL (the default mode, killnowait) and fails the call itself
    with pytest.raises(CancelledError):
        await call
    await within(interrupted)
    assert await within(caller.call("eform.status"))  # the session goes on
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_caller_that_leaves_interrupts_the_call_it_made(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    call = caller.call("app.slow")
    call.addErrback(lambda _: None)
    await within(invoked)
    await leave(caller)
    await within(interrupted)
    await leave(callee)


# -- shared and pattern registrations ---------------------------------------------------------


async def callees(server, procedure, invoke, count):
    """`count` admin sessions registering `procedure` with `invoke`; each answers its index."""
    peers = []
    for index in range(count):
        peer = await join(server, role="admin")
        await within(peer.register(lambda index=index: index, procedure, options=RegisterOptions(invoke=invoke)))
        peers.append(peer)
    return peers


@pytest_twisted.ensureDeferred
async def test_a_roundrobin_registration_gives_each_call_to_the_next_callee(server):
    peers = await callees(server, "app.work", "roundrobin", 3)
    caller = await join(server, role="staff")
    assert [await within(caller.call("app.work")) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    await leave(*peers, caller)


@pytest.mark.parametrize(("invoke", "answers"), [("first", [0, 0, 1]), ("last", [2, 2, 1])])
@pytest_twisted.ensureDeferred
async def test_first_and_last_give_calls_to_the_earliest_or_latest_callee_still_there(server, invoke, answers):
    peers = await callees(server, "app.work", invoke, 3)
    caller = await join(server, role="staff")
    got = [await within(caller.call("app.work")), await within(caller.call("app.work"))]
    await leave(peers[0] if invoke == "first" else peers[2])
    got.append(await within(caller.call("app.work")))
    assert got == answers
    await leave(*[peer for peer in peers if not peer.gone.called], caller)


@pytest_twisted.ensureDeferred
async def test_a_random_registration_spreads_calls_over_its_callees(server):
    peers = await callees(server, "app.work", "random", 2)
    caller = await join(server, role="staff")
    answers = {await within(caller.call("app.work")) for _ in range(30)}
    assert answers == {0, 1}  # all 30 to one callee: 1 chance in 2^29 (30: within the rate limit's burst)
    await leave(*peers, caller)


@pytest.mark.parametrize(("first", "second"), [("single", "single"), ("roundrobin", "random"), ("single", "first")])
@pytest_twisted.ensureDeferred
async def test_joining_a_registration_needs_the_same_shared_policy(server, first, second):
    [owner] = await callees(server, "app.work", first, 1)
    other = await join(server, role="admin")
    error = await call_error(other.register(lambda: 1, "app.work", options=RegisterOptions(invoke=second)))
    assert error.error == "wamp.error.procedure_already_exists"
    await leave(owner, other)


@pytest_twisted.ensureDeferred
async def test_a_prefix_registration_serves_every_procedure_under_it_and_learns_which(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")

    def read(*args, details=None):
        return [details.procedure, *args]

    await within(callee.register(read, "app.files.", options=RegisterOptions(match="prefix", details_arg="details")))
    assert await within(caller.call("app.files.read", "a.txt")) == ["app.files.read", "a.txt"]
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_call_goes_to_the_exact_registration_then_the_longest_prefix_then_a_wildcard(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    for name, procedure, match in [("exact", "app.users.get", "exact"), ("short prefix", "app.", "prefix"),
                                   ("long prefix", "app.users.", "prefix"), ("wildcard", "app..list", "wildcard")]:
        await within(callee.register(lambda name=name: name, procedure, options=RegisterOptions(match=match)))
    assert await within(caller.call("app.users.get")) == "exact"
    assert await within(caller.call("app.users.delete")) == "long prefix"
    assert await within(caller.call("app.orders.list")) == "short prefix"
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_wildcard_registration_serves_the_procedures_it_matches(server):
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    await within(callee.register(lambda: "listed", "app..list", options=RegisterOptions(match="wildcard")))
    assert await within(caller.call("app.orders.list")) == "listed"
    error = await call_error(caller.call("app.orders.get"))
    assert error.error == "wamp.error.no_such_procedure"
    await leave(callee, caller)


# -- the meta API -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_session_meta_api_counts_lists_and_describes_the_joined_sessions(server):
    admin = await join(server, role="admin", user="ada")
    staff = await join(server, role="staff", user="sam")
    assert await within(admin.call("wamp.session.count")) == 2
    assert await within(admin.call("wamp.session.count", ["staff"])) == 1
    assert sorted(await within(admin.call("wamp.session.list"))) == sorted([admin.session_id, staff.session_id])
    details = await within(admin.call("wamp.session.get", staff.session_id))
    assert details == {"session": staff.session_id, "authid": "sam", "authrole": "staff", "authmethod": "ticket",
                       "authprovider": "eformws", "transport": {"type": "websocket"}}
    error = await call_error(admin.call("wamp.session.get", 1))
    assert error.error == "wamp.error.no_such_session"
    await leave(admin, staff)


@pytest_twisted.ensureDeferred
async def test_session_meta_events_say_who_joins_and_who_leaves(server):
    admin = await join(server, role="admin")
    joins, _ = await subscribe(admin, "wamp.session.on_join")
    leaves, _ = await subscribe(admin, "wamp.session.on_leave")
    staff = await join(server, role="staff", user="sam")
    (details,), _, _ = await joins.next_publication()
    assert (details["session"], details["authid"], details["authrole"]) == (staff.session_id, "sam", "staff")
    session_id = staff.session_id
    await leave(staff)
    args, _, _ = await leaves.next_publication()
    assert args == (session_id, "sam", "staff")
    await leave(admin)


@pytest_twisted.ensureDeferred
async def test_the_subscription_meta_api_finds_subscriptions_and_their_subscribers(server):
    admin = await join(server, role="admin")
    staff = await join(server, role="staff")
    _, exact = await subscribe(staff, "app.orders.created")
    _, prefix = await subscribe(staff, "app.orders.", match="prefix")
    listed = await within(admin.call("wamp.subscription.list"))
    assert (listed["exact"], listed["prefix"], listed["wildcard"]) == ([exact.id], [prefix.id], [])
    assert await within(admin.call("wamp.subscription.lookup", "app.orders.", {"match": "prefix"})) == prefix.id
    assert await within(admin.call("wamp.subscription.lookup", "app.nothing")) is None
    assert sorted(await within(admin.call("wamp.subscription.match", "app.orders.created"))) == sorted([exact.id, prefix.id])
    described = await within(admin.call("wamp.subscription.get", exact.id))
    assert described.pop("created").endswith("Z")
    assert described == {"id": exact.id, "uri": "app.orders.created", "match": "exact"}
    assert await within(admin.call("wamp.subscription.list_subscribers", exact.id)) == [staff.session_id]
    assert await within(admin.call("wamp.subscription.count_subscribers", exact.id)) == 1
    assert (await call_error(admin.call("wamp.subscription.get", 1))).error == "wamp.error.no_such_subscription"
    await leave(admin, staff)


@pytest_twisted.ensureDeferred
async def test_the_registration_meta_api_finds_registrations_and_their_callees(server):
    admin = await join(server, role="admin")
    callee = await join(server, role="staff")
    registration = await within(callee.register(lambda: 1, "app.files.", options=RegisterOptions(match="prefix")))
    listed = await within(admin.call("wamp.registration.list"))
    assert (listed["exact"], listed["prefix"], listed["wildcard"]) == ([], [registration.id], [])
    assert await within(admin.call("wamp.registration.lookup", "app.files.", {"match": "prefix"})) == registration.id
    assert await within(admin.call("wamp.registration.match", "app.files.read")) == registration.id
    assert await within(admin.call("wamp.registration.match", "app.other")) is None
    described = await within(admin.call("wamp.registration.get", registration.id))
    assert described.pop("created").endswith("Z")
    assert described == {"id": registration.id, "uri": "app.files.", "match": "prefix", "invoke": "single"}
    assert await within(admin.call("wamp.registration.list_callees", registration.id)) == [callee.session_id]
    assert await within(admin.call("wamp.registration.count_callees", registration.id)) == 1
    await leave(admin, callee)


@pytest_twisted.ensureDeferred
async def test_the_meta_api_is_for_roles_the_table_lets_use_it(server):
    staff = await join(server, role="staff")
    assert (await call_error(staff.call("wamp.session.count"))).error == "wamp.error.not_authorized"
    assert (await call_error(staff.subscribe(print, "wamp.session.on_join"))).error == "wamp.error.not_authorized"
    await leave(staff)


@pytest_twisted.ensureDeferred
async def test_no_client_publishes_or_registers_under_the_meta_apis_uris(server):
    admin = await join(server, role="admin")
    error = await call_error(admin.publish("wamp.session.on_join", {}, options=ACKNOWLEDGED))
    assert error.error == "wamp.error.not_authorized"
    assert (await call_error(admin.register(lambda: 1, "wamp.session.count"))).error == "wamp.error.not_authorized"
    await leave(admin)


# -- retained events --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_subscriber_asking_for_it_gets_the_last_retained_event_of_the_topic(server):
    publisher = await join(server, role="admin", user="ada")
    for n in (1, 2):
        await within(publisher.publish("app.display.text", f"text {n}", size=n,
                                       options=PublishOptions(acknowledge=True, retain=True)))
    await within(publisher.publish("app.display.text", "not retained", options=ACKNOWLEDGED))
    subscriber = await join(server, role="staff")
    inbox, _ = await subscribe(subscriber, "app.display.text", get_retained=True)
    args, kwargs, details = await inbox.next_publication()
    assert (args, kwargs, details.retained, details.publisher_authid) == (("text 2",), {"size": 2}, True, "ada")
    assert inbox.empty
    await leave(publisher, subscriber)


@pytest_twisted.ensureDeferred
async def test_a_subscriber_that_does_not_ask_gets_no_retained_event(server):
    publisher = await join(server, role="admin")
    await within(publisher.publish("app.display.text", "kept", options=PublishOptions(acknowledge=True, retain=True)))
    subscriber = await join(server, role="staff")
    inbox, _ = await subscribe(subscriber, "app.display.text")
    await within(publisher.publish("app.display.text", "live", options=ACKNOWLEDGED))
    args, _, details = await inbox.next_publication()
    assert (args, details.retained) == (("live",), None)
    await leave(publisher, subscriber)


@pytest_twisted.ensureDeferred
async def test_a_pattern_subscription_gets_the_retained_event_of_each_topic_it_matches(server):
    publisher = await join(server, role="admin")
    for topic in ("app.display.a", "app.display.b", "app.other"):
        await within(publisher.publish(topic, topic, options=PublishOptions(acknowledge=True, retain=True)))
    subscriber = await join(server, role="staff")
    inbox, _ = await subscribe(subscriber, "app.display.", match="prefix", get_retained=True)
    got = {(await inbox.next_publication())[2].topic for _ in range(2)}
    assert got == {"app.display.a", "app.display.b"} and inbox.empty
    await leave(publisher, subscriber)


# -- limits of their own ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_callees_answer_over_the_size_limit_fails_the_call_payload_size_exceeded(start_server):
    server = await start_server({"wamp.max_message_bytes": 10_000})
    callee = await join(server, role="admin")
    caller = await join(server, role="staff")
    await within(callee.register(lambda: "x" * 15_000, "app.big"))
    with pytest.raises(PayloadExceededError, match="over the limit of 10000"):  # Autobahn's class for the URI
        await within(caller.call("app.big"))
    assert await within(caller.call("eform.status"))  # both sessions go on
    await within(callee.register(lambda: "small", "app.small"))
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_past_max_registrations_register_is_refused_and_the_session_keeps_the_others(start_server):
    server = await start_server({"wamp.max_registrations": 2})
    callee = await join(server, role="admin")
    first = await within(callee.register(lambda: 1, "app.one"))
    await within(callee.register(lambda: 2, "app.two"))
    error = await call_error(callee.register(lambda: 3, "app.three"))
    assert (error.error, error.kwargs) == ("eform.error.registration_limit", {"limit": 2})
    await within(first.unregister())  # frees a place
    await within(callee.register(lambda: 3, "app.three"))
    assert await within(callee.call("app.two")) == 2
    await leave(callee)


# -- Autobahn|JS --------------------------------------------------------------------------------


@needs_node
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest_twisted.ensureDeferred
async def test_autobahn_js_peers_publish_subscribe_register_and_call_with_progress(server, serializer):
    assert NODE is not None, "Node is here but tests/js/node_modules is not: npm ci --prefix tests/js"
    callee_ticket, caller_ticket = await server.session(role="admin"), await server.session(role="staff")
    child = Lines()
    arguments = [*NODE, "apps.js", server.url("/wamp"), callee_ticket, caller_ticket, serializer]
    reactor.spawnProcess(child, NODE[0], arguments, env=dict(os.environ), path=str(JS_DIR))
    seen = json.loads(await within(child.lines.get(), 20))
    assert seen == {
        "event": {"args": ["hello", 1], "kwargs": {"n": 2}, "publisher_authrole": "staff"},
        "progress": [{"args": ["half"], "kwargs": {"of": 3}}],
        "result": {"args": [6.5], "kwargs": {"caller_authrole": "staff"}},
        "error": "wamp.error.no_such_procedure",
    }, child.stderr
    assert await within(child.ended, 10) == 0, child.stderr



@pytest_twisted.ensureDeferred
async def test_subscription_meta_events_follow_a_subscription_from_creation_to_deletion(server):
    admin = await join(server, role="admin")
    inbox, own = await subscribe(admin, "wamp.subscription.", match="prefix")
    own_events = [await inbox.next_publication() for _ in range(2)]  # its own subscription's, after SUBSCRIBED
    assert [args for args, _, _ in own_events][1] == (admin.session_id, own.id)
    staff = await join(server, role="staff")
    _, subscription = await subscribe(staff, "app.orders.created")
    await within(subscription.unsubscribe())
    events = [await inbox.next_publication() for _ in range(4)]
    assert [details.topic for _, _, details in events] == [
        "wamp.subscription.on_create", "wamp.subscription.on_subscribe",
        "wamp.subscription.on_unsubscribe", "wamp.subscription.on_delete"]
    (session, created), _, _ = events[0]
    assert (session, created["id"], created["uri"], created["match"]) == (
        staff.session_id, subscription.id, "app.orders.created", "exact")
    assert [args for args, _, _ in events[1:]] == [(staff.session_id, subscription.id)] * 3
    await leave(admin, staff)


@pytest_twisted.ensureDeferred
async def test_registration_meta_events_include_those_of_a_session_that_leaves(server):
    admin = await join(server, role="admin")
    inbox, _ = await subscribe(admin, "wamp.registration.", match="prefix")
    callee = await join(server, role="staff")
    registration = await within(callee.register(lambda: 1, "app.one"))
    session_id = callee.session_id
    await leave(callee)
    events = [await inbox.next_publication() for _ in range(4)]
    assert [details.topic for _, _, details in events] == [
        "wamp.registration.on_create", "wamp.registration.on_register",
        "wamp.registration.on_unregister", "wamp.registration.on_delete"]
    assert events[0][0][1]["invoke"] == "single"
    assert [args for args, _, _ in events[1:]] == [(session_id, registration.id)] * 3
    await leave(admin)


# -- Autobahn|Python, asyncio flavour (its own process: txaio takes one framework per process) ---


@pytest.mark.parametrize("serializer", ["json", "cbor"])
@pytest_twisted.ensureDeferred
async def test_autobahn_asyncio_sessions_publish_subscribe_register_and_call(server, serializer):
    callee_ticket, caller_ticket = await server.session(role="admin"), await server.session(role="staff")
    child = Lines()
    script = str(Path(__file__).parent / "asyncio_apps.py")
    reactor.spawnProcess(child, sys.executable, [sys.executable, script, server.url("/wamp"), callee_ticket,
                                                 caller_ticket, serializer], env=dict(os.environ))
    seen = json.loads(await within(child.lines.get(), 20))
    assert seen == {
        "event": {"args": ["hello", 1], "kwargs": {"n": 2}, "publisher_authrole": "staff"},
        "progress": [["half", 3]],
        "result": [6.5, "staff"],
        "error": "wamp.error.no_such_procedure",
    }, child.stderr
    assert await within(child.ended, 10) == 0, child.stderr


@pytest_twisted.ensureDeferred
async def test_a_pattern_registration_may_not_reach_past_what_the_role_may_register(start_server):
    # staff may register app.*; a wildcard .unlock would also take the kiosks' kiosk.unlock calls
    server = await start_server({"wamp.permissions": [
        {"uri": "app.", "match": "prefix", "roles": ["admin", "staff"], "allow": ["register", "call"]},
        {"uri": "kiosk.", "match": "prefix", "roles": ["admin"], "allow": ["register"]},
        {"uri": "kiosk.", "match": "prefix", "roles": ["kiosk"], "allow": ["call"]},
    ]})
    staff = await join(server, role="staff")
    for pattern, match in [("..unlock", "wildcard"), ("kiosk..x", "wildcard"), ("app", "wildcard"), ("ap", "prefix")]:
        error = await call_error(staff.register(lambda: "hijacked", pattern, options=RegisterOptions(match=match)))
        assert error.error == "wamp.error.not_authorized", pattern
    await within(staff.register(lambda: "mine", "app..list", options=RegisterOptions(match="wildcard")))
    admin = await join(server, role="admin")
    await within(admin.register(lambda: "unlocked", "kiosk.unlock"))
    kiosk = await join(server, role="kiosk", kiosk="kiosk-1")
    assert await within(kiosk.call("kiosk.unlock")) == "unlocked"
    await leave(staff, admin, kiosk)


# -- what an attack on the router found ---------------------------------------------------------

TOO_BIG_FOR_MSGPACK = 2**70  # JSON carries it; MessagePack (64-bit integers) cannot


@pytest_twisted.ensureDeferred
async def test_a_call_the_callees_serialization_cannot_carry_is_answered_invalid_argument(server):
    callee = await join(server, "msgpack", role="admin")
    caller = await join(server, "json", role="staff")
    await within(callee.register(lambda *args: "unreachable", "app.echo"))
    error = await call_error(caller.call("app.echo", TOO_BIG_FOR_MSGPACK))
    assert error.error == "wamp.error.invalid_argument"
    assert await within(caller.call("app.echo", 1)) == "unreachable"  # both go on
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_callees_answer_the_callers_serialization_cannot_carry_is_answered_invalid_argument(server):
    callee = await join(server, "json", role="admin")
    caller = await join(server, "msgpack", role="staff")

    def refuse():
        raise ApplicationError("app.error.big", TOO_BIG_FOR_MSGPACK)

    await within(callee.register(lambda: TOO_BIG_FOR_MSGPACK, "app.big"))
    await within(callee.register(refuse, "app.refuse"))
    assert (await call_error(caller.call("app.big"))).error == "wamp.error.invalid_argument"
    assert (await call_error(caller.call("app.refuse"))).error == "wamp.error.invalid_argument"
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_retained_event_with_binary_values_is_kept_and_given(server):
    publisher = await join(server, "cbor", role="admin")
    await within(publisher.publish("app.blob", b"\x00\xff", options=PublishOptions(acknowledge=True, retain=True)))
    for serializer in ("msgpack", "cbor"):
        subscriber = await join(server, serializer, role="staff")
        inbox, _ = await subscribe(subscriber, "app.blob", get_retained=True)
        args, _, details = await inbox.next_publication()
        assert (args, details.retained) == ((b"\x00\xff",), True)
        await leave(subscriber)
    await leave(publisher)


@pytest_twisted.ensureDeferred
async def test_a_retained_event_the_subscribers_serialization_cannot_carry_is_left_out(server):
    publisher = await join(server, "json", role="admin")
    await within(publisher.publish("app.count", TOO_BIG_FOR_MSGPACK,
                                   options=PublishOptions(acknowledge=True, retain=True)))
    subscriber = await join(server, "msgpack", role="staff")
    inbox, _ = await subscribe(subscriber, "app.count", get_retained=True)
    await within(publisher.publish("app.count", 1, options=ACKNOWLEDGED))
    args, _, details = await inbox.next_publication()
    assert (args, details.retained) == ((1,), None)  # the live one: the retained one could not be sent
    await leave(publisher, subscriber)


@pytest_twisted.ensureDeferred
async def test_a_publication_at_the_size_limit_reaches_its_subscriber_who_is_not_taken_for_slow(start_server):
    server = await start_server({"wamp.max_message_bytes": 20_000, "websocket.max_unsent_bytes": 16_384})
    publisher = await join(server, role="admin")
    subscriber = await join(server, role="staff")
    inbox, _ = await subscribe(subscriber, "app.big")
    await within(publisher.publish("app.big", "x" * 19_900, options=ACKNOWLEDGED))
    args, _, _ = await inbox.next_publication()
    assert len(args[0]) == 19_900
    assert await within(subscriber.call("eform.status"))
    await leave(publisher, subscriber)


@pytest_twisted.ensureDeferred
async def test_an_eligible_list_past_a_thousand_entries_is_refused(server):
    publisher = await join(server, role="admin")
    error = await call_error(publisher.publish("app.x", options=PublishOptions(acknowledge=True,
                                                                              eligible=list(range(1, 1002)))))
    assert error.error == "wamp.error.invalid_argument"
    await leave(publisher)
