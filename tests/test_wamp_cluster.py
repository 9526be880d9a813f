"""WAMP across processes (docs/wamp.md, "Across processes"): two real `twistd -n eformws`
on one Redis, stock Autobahn|Python sessions on each; a callee on one process serves
callers on the other, registrations hold for the deployment, a process that dies is
forgotten."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallDetails, CallOptions, PublishOptions, RegisterOptions
from conftest import within
from js_peers import JS_DIR, NODE, Lines, needs_node
from logcheck import logged_problems  # noqa: F401  (autouse: no error in the log)
from processes import create_session
from test_redis import gateways
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from wamp_peer import call_error, open_peer, subscribe


async def peer_on(gateway, tmp_path, role="admin", serializer="json"):
    peer = open_peer(gateway, serializer, ticket=await create_session(tmp_path, gateway.config, role=role))
    await within(peer.joined)
    return peer


async def leave(*peers) -> None:
    for peer in peers:
        peer.leave()
        await within(peer.gone)


async def reconnected(gateway, mark) -> None:
    """Wait until a gateway's Redis connections that WAMP across processes needs are back
    (until then a call to another process is answered eform.error.unavailable at once)."""
    for name in ("lookups", "writes", "bus reader"):
        await gateway.process.line(rf"redis {name} reached \S+ again", after=mark)


async def two(spawn, tmp_path, redis_url, redis_prefix, serializers=("json", "json")):
    """Gateways A and B, and a joined admin peer on each: (a, b, on_a, on_b)."""
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    return a, b, await peer_on(a, tmp_path, serializer=serializers[0]), await peer_on(b, tmp_path, serializer=serializers[1])


@pytest_twisted.ensureDeferred
async def test_a_callee_on_one_process_serves_a_caller_on_the_other_with_payload_and_caller_untouched(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix, ("msgpack", "cbor"))
    seen = []

    def echo(*args, details: CallDetails, **kwargs):
        seen.append((details.caller, details.caller_authrole))
        return {"args": list(args), "kwargs": kwargs}

    await within(callee.register(echo, "app.echo", options=RegisterOptions(details_arg="details")))
    answer = await within(caller.call("app.echo", 1, b"\x00raw", {"deep": [None, 2.5]}, flag=True))
    assert answer == {"args": [1, b"\x00raw", {"deep": [None, 2.5]}], "kwargs": {"flag": True}}
    assert seen == [(caller.session_id, "admin")]
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_procedure_registered_on_one_process_is_refused_procedure_already_exists_on_the_other(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, first, second = await two(spawn, tmp_path, redis_url, redis_prefix)
    await within(first.register(lambda: "first", "app.only"))
    error = await call_error(second.register(lambda: "second", "app.only"))
    assert error.error == "wamp.error.procedure_already_exists"
    assert await within(second.call("app.only")) == "first"
    await leave(first, second)


@pytest_twisted.ensureDeferred
async def test_a_callees_error_on_one_process_reaches_the_caller_on_the_other_as_sent(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix)

    def refuse():
        raise ApplicationError("app.error.sold_out", "none left", remaining=0)

    await within(callee.register(refuse, "app.buy"))
    error = await call_error(caller.call("app.buy"))
    assert (error.error, error.args, error.kwargs) == ("app.error.sold_out", ("none left",), {"remaining": 0})
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_progressive_results_cross_processes_in_order_before_the_final_result(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix)

    def count(details: CallDetails):
        for n in range(5):
            details.progress(n)
        return "done"

    await within(callee.register(count, "app.count", options=RegisterOptions(details_arg="details")))
    progress = []
    answer = await within(caller.call("app.count", options=CallOptions(on_progress=progress.append)))
    assert (progress, answer) == ([0, 1, 2, 3, 4], "done")
    await leave(callee, caller)


async def pending_procedure(callee, name):
    """Register `name` answering only when canceled; fires (invoked, interrupted)."""
    invoked, interrupted = Deferred(), Deferred()

    def interrupt(answer):
        interrupted.callback(None)
        answer.errback(ApplicationError("wamp.error.canceled"))

    def slow():
        invoked.callback(None)
        return Deferred(interrupt)

    await within(callee.register(slow, name))
    return invoked, interrupted


@pytest_twisted.ensureDeferred
async def test_a_call_past_its_timeout_fails_timeout_and_the_callee_on_the_other_process_is_interrupted(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix)
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    error = await call_error(caller.call("app.slow", options=CallOptions(timeout=300)))
    assert error.error == "wamp.error.timeout"
    await within(invoked)
    await within(interrupted)
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_canceled_call_interrupts_the_callee_on_the_other_process(tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix)
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    call = caller.call("app.slow")
    await within(invoked)
    call.cancel()  # Autobahn sends CANCEL (killnowait) and fails the call itself
    with pytest.raises(CancelledError):
        await call
    await within(interrupted)
    assert await within(caller.call("wamp.session.count")) >= 1  # the caller goes on
    await leave(callee, caller)


@pytest_twisted.ensureDeferred
async def test_a_call_whose_callee_on_the_other_process_leaves_fails_canceled(tmp_path, spawn, redis_url, redis_prefix):
    _, _, callee, caller = await two(spawn, tmp_path, redis_url, redis_prefix)
    invoked, _ = await pending_procedure(callee, "app.slow")
    call = caller.call("app.slow")
    await within(invoked)
    callee.leave()
    error = await call_error(call)
    assert error.error == "wamp.error.canceled"
    error = await call_error(caller.call("app.slow"))
    assert error.error == "wamp.error.no_such_procedure"
    await leave(caller)


@pytest_twisted.ensureDeferred
async def test_a_roundrobin_registration_shared_by_two_processes_takes_turns(tmp_path, spawn, redis_url, redis_prefix):
    a, _, on_a, on_b = await two(spawn, tmp_path, redis_url, redis_prefix)
    shared = RegisterOptions(invoke="roundrobin")
    await within(on_a.register(lambda: "a", "app.work", options=shared))
    await within(on_b.register(lambda: "b", "app.work", options=shared))
    caller = await peer_on(a, tmp_path, role="staff")
    answers = [await within(caller.call("app.work")) for _ in range(4)]
    assert sorted(answers) == ["a", "a", "b", "b"] and answers[0] != answers[1]
    await leave(on_a, on_b, caller)


@pytest_twisted.ensureDeferred
async def test_the_registration_meta_api_on_one_process_finds_a_callee_on_the_other(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, asker, callee = await two(spawn, tmp_path, redis_url, redis_prefix)
    registration = await within(callee.register(lambda: None, "app.found"))
    assert await within(asker.call("wamp.registration.lookup", "app.found")) == registration.id
    assert await within(asker.call("wamp.registration.list_callees", registration.id)) == [callee.session_id]
    await leave(asker, callee)


@pytest_twisted.ensureDeferred
async def test_a_prefix_registration_on_one_process_serves_calls_made_on_the_other_after_a_publication(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, caller, callee = await two(spawn, tmp_path, redis_url, redis_prefix)
    await within(callee.register(lambda details: details.procedure, "app.doors.",
                                 options=RegisterOptions(match="prefix", details_arg="details")))
    # What the callee's process tells the others travels in order with what its clients publish:
    inbox, _ = await subscribe(caller, "app.marker")
    await within(callee.publish("app.marker", options=PublishOptions(acknowledge=True)))
    await inbox.next_publication()
    assert await within(caller.call("app.doors.7.open")) == "app.doors.7.open"
    await leave(caller, callee)


@pytest_twisted.ensureDeferred
async def test_when_the_callees_process_dies_its_callers_get_canceled_and_the_procedure_is_free_again(
        tmp_path, spawn, redis_url, redis_prefix):
    a, b, caller, callee = await two(spawn, tmp_path, redis_url, redis_prefix)
    invoked, _ = await pending_procedure(callee, "app.slow")
    call = caller.call("app.slow")
    await within(invoked)
    b.process.transport.signalProcess(signal.SIGKILL)
    error = await call_error(call)  # once the registry sees B's heartbeat gone (node_ttl)
    assert error.error == "wamp.error.canceled"
    successor = await peer_on(a, tmp_path)
    await within(successor.register(lambda: "again", "app.slow"))
    assert await within(caller.call("app.slow")) == "again"
    await leave(caller, successor)


@pytest_twisted.ensureDeferred
async def test_the_session_meta_api_on_one_process_counts_lists_and_describes_sessions_of_both(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, asker, other = await two(spawn, tmp_path, redis_url, redis_prefix)
    assert await within(asker.call("wamp.session.count")) == 2
    assert sorted(await within(asker.call("wamp.session.list"))) == sorted([asker.session_id, other.session_id])
    details = await within(asker.call("wamp.session.get", other.session_id))
    assert (details["session"], details["authrole"]) == (other.session_id, "admin")
    error = await call_error(asker.call("wamp.session.get", 1))
    assert error.error == "wamp.error.no_such_session"
    await leave(asker, other)


@pytest_twisted.ensureDeferred
async def test_a_topic_subscribed_on_both_processes_is_one_subscription_to_the_meta_api(
        tmp_path, spawn, redis_url, redis_prefix):
    _, _, on_a, on_b = await two(spawn, tmp_path, redis_url, redis_prefix)
    _, here = await subscribe(on_a, "app.news")
    _, there = await subscribe(on_b, "app.news")
    assert here.id == there.id
    assert await within(on_a.call("wamp.subscription.lookup", "app.news")) == here.id
    assert await within(on_a.call("wamp.subscription.list_subscribers", here.id)) == sorted(
        [on_a.session_id, on_b.session_id])
    assert await within(on_a.call("wamp.subscription.count_subscribers", here.id)) == 2
    _, only_there = await subscribe(on_b, "app.elsewhere")
    assert (await within(on_a.call("wamp.subscription.get", only_there.id)))["uri"] == "app.elsewhere"
    await leave(on_a, on_b)


@pytest_twisted.ensureDeferred
async def test_a_process_started_after_an_event_was_retained_gives_it_to_a_new_subscriber(
        tmp_path, spawn, redis_url, redis_prefix):
    from test_redis import start_gateway

    (a,) = await gateways(spawn, tmp_path, redis_url, redis_prefix, count=1)
    publisher = await peer_on(a, tmp_path)
    await within(publisher.publish("app.display", "kept", size=3,
                                   options=PublishOptions(acknowledge=True, retain=True)))
    later = await start_gateway(spawn, tmp_path / "later", redis_url, redis_prefix)
    subscriber = await peer_on(later, tmp_path, role="staff")
    inbox, _ = await subscribe(subscriber, "app.display", get_retained=True)
    args, kwargs, details = await inbox.next_publication()
    assert (args, kwargs, details.retained, details.publisher) == (("kept",), {"size": 3}, True, publisher.session_id)
    await leave(publisher, subscriber)


@pytest_twisted.ensureDeferred
async def test_after_redis_lost_the_registry_each_process_claims_its_registrations_again_on_reconnect(
        tmp_path, spawn, own_redis, redis_admin, redis_prefix):
    a, b = await gateways(spawn, tmp_path, own_redis.url, redis_prefix)
    caller, callee = await peer_on(a, tmp_path), await peer_on(b, tmp_path)
    await within(callee.register(lambda: "still here", "app.kept"))
    marks = a.process.mark, b.process.mark
    # As after a failover to a replica that had not yet the records: gone, and every link new.
    await redis_admin.command("DEL", f"{redis_prefix}wamp:registrations", f"{redis_prefix}wamp:callee_nodes")
    await redis_admin.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await b.process.line(r"wamp registry: 1 registrations of this process claimed again", after=marks[1])
    await reconnected(a, marks[0])
    await reconnected(b, marks[1])
    assert await within(caller.call("app.kept")) == "still here"
    error = await call_error(caller.register(lambda: "usurper", "app.kept"))
    assert error.error == "wamp.error.procedure_already_exists"
    await leave(caller, callee)


@pytest_twisted.ensureDeferred
async def test_a_registration_taken_elsewhere_while_redis_had_lost_it_is_revoked_from_its_callee(
        tmp_path, spawn, own_redis, redis_admin, redis_prefix):
    a, b = await gateways(spawn, tmp_path, own_redis.url, redis_prefix)
    usurper, callee = await peer_on(a, tmp_path), await peer_on(b, tmp_path)
    await within(callee.register(lambda: "first", "app.kept"))
    mark = b.process.mark
    await redis_admin.command("DEL", f"{redis_prefix}wamp:registrations", f"{redis_prefix}wamp:callee_nodes")
    taken = await within(usurper.register(lambda: "usurper", "app.kept"))  # the registry knew no one
    await redis_admin.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await b.process.line(r"wamp registration app\.kept was taken by another process", after=mark)
    await reconnected(b, mark)
    assert await within(callee.call("wamp.registration.list_callees", taken.id)) == [usurper.session_id]
    assert await within(callee.call("app.kept")) == "usurper"  # the revoked callee's session goes on
    await leave(usurper, callee)


async def stock_peers_across(child_argv, spawn, tmp_path, redis_url, redis_prefix, cwd=None) -> dict:
    """Run a stock-peers script (tests/js/apps.js, tests/asyncio_apps.py) with its callee
    on process A and its caller on process B; what it saw."""
    a, b = await gateways(spawn, tmp_path, redis_url, redis_prefix)
    callee_ticket = await create_session(tmp_path, a.config, role="admin")
    caller_ticket = await create_session(tmp_path, a.config, role="staff")
    child = Lines()
    argv = [*child_argv(a.url("/wamp"), callee_ticket, caller_ticket), b.url("/wamp")]
    reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ), path=cwd)
    seen = json.loads(await within(child.lines.get(), 20))
    assert await within(child.ended, 10) == 0, child.stderr
    return seen


@needs_node
@pytest_twisted.ensureDeferred
async def test_autobahn_js_peers_on_two_processes_publish_subscribe_register_and_call_with_progress(
        tmp_path, spawn, redis_url, redis_prefix):
    def argv(url, callee, caller):
        return [*NODE, "apps.js", url, callee, caller, "msgpack"]

    seen = await stock_peers_across(argv, spawn, tmp_path, redis_url, redis_prefix, cwd=str(JS_DIR))
    assert seen == {
        "event": {"args": ["hello", 1], "kwargs": {"n": 2}, "publisher_authrole": "staff"},
        "progress": [{"args": ["half"], "kwargs": {"of": 3}}],
        "result": {"args": [6.5], "kwargs": {"caller_authrole": "staff"}},
        "error": "wamp.error.no_such_procedure",
    }


@pytest_twisted.ensureDeferred
async def test_autobahn_asyncio_peers_on_two_processes_publish_subscribe_register_and_call(
        tmp_path, spawn, redis_url, redis_prefix):
    def argv(url, callee, caller):
        return [sys.executable, str(Path(__file__).parent / "asyncio_apps.py"), url, callee, caller, "cbor"]

    seen = await stock_peers_across(argv, spawn, tmp_path, redis_url, redis_prefix)
    assert seen == {
        "event": {"args": ["hello", 1], "kwargs": {"n": 2}, "publisher_authrole": "staff"},
        "progress": [["half", 3]],
        "result": [6.5, "staff"],
        "error": "wamp.error.no_such_procedure",
    }


# -- what an attack found (each failed before its fix) ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_process_that_stalled_past_node_ttl_claims_its_registrations_again_once_it_runs(
        tmp_path, spawn, redis_url, redis_prefix):
    a, b, caller, callee = await two(spawn, tmp_path, redis_url, redis_prefix)
    await within(callee.register(lambda: "still here", "app.kept"))
    marks = a.process.mark, b.process.mark
    b.process.transport.signalProcess(signal.SIGSTOP)  # a stall: a paused VM, a starved CPU
    await a.process.line(r"stopped process\(es\) forgotten", after=marks[0])
    b.process.transport.signalProcess(signal.SIGCONT)
    await b.process.line(r"wamp registry: 1 registrations of this process claimed again", after=marks[1])
    assert await within(caller.call("app.kept")) == "still here"
    await leave(caller, callee)


@pytest_twisted.ensureDeferred
async def test_a_release_redis_refused_is_taken_once_redis_has_room_again(tmp_path, spawn, own_redis, redis_admin, redis_prefix):
    a, b = await gateways(spawn, tmp_path, own_redis.url, redis_prefix)
    caller, callee = await peer_on(a, tmp_path), await peer_on(b, tmp_path)
    await within(callee.register(lambda: "old", "app.job"))
    mark = b.process.mark
    await redis_admin.command("CONFIG", "SET", "maxmemory", "1")  # out of memory: scripts refused, no link lost
    callee.leave()
    await within(callee.gone)
    await b.process.line(r"wamp registry did not take a release", after=mark)
    await redis_admin.command("CONFIG", "SET", "maxmemory", "0")
    await b.process.line(r"wamp registry took a release it could not take before \(app\.job\)", after=mark)
    successor = await peer_on(a, tmp_path)
    await within(successor.register(lambda: "new", "app.job"))
    assert await within(caller.call("app.job")) == "new"
    await leave(caller, successor)


@pytest_twisted.ensureDeferred
async def test_a_register_whose_claim_reply_was_lost_leaves_no_registration_behind(
        tmp_path, spawn, redis_url, redis_prefix):
    from eformws.backends.redis import RedisAddress, RedisConnection
    from proxy import FaultyProxy
    from test_redis import start_gateway
    from twisted.internet.task import deferLater

    address = RedisAddress.parse(redis_url)
    proxy = FaultyProxy(address.host, address.port)
    port = proxy.start(reactor)
    admin = RedisConnection(address, "test", 0.05, 0.2)
    admin.startService()
    try:
        a = await start_gateway(spawn, tmp_path / "a", redis_url, redis_prefix)
        b = await start_gateway(spawn, tmp_path / "b", f"redis://127.0.0.1:{port}/{address.db}", redis_prefix)
        caller, callee = await peer_on(a, tmp_path), await peer_on(b, tmp_path)
        await within(admin.when_connected())
        proxy.swallowing = True  # Redis runs B's claim; its reply is lost on the way back
        registering = callee.register(lambda: "served", "app.lost")
        for _ in range(250):  # no event says the script ran: Redis is asked
            if await admin.command("HEXISTS", f"{redis_prefix}wamp:registrations", "exact app.lost"):
                break
            await deferLater(reactor, 0.02, lambda: None)
        mark = b.process.mark
        proxy.cut()  # the link goes (as after CLIENT KILL, or a reply timeout)
        proxy.swallowing = False
        assert (await call_error(registering)).error == "eform.error.unavailable"
        await reconnected(b, mark)  # the release owed is sent first on the new link
        await leave(callee)
        successor = await peer_on(a, tmp_path)
        await within(successor.register(lambda: "successor", "app.lost"))  # no record left behind
        assert await within(caller.call("app.lost")) == "successor"
        await leave(caller, successor)
    finally:
        admin.stopService()
        proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_to_another_process_while_redis_is_out_of_reach_is_answered_unavailable_at_once(
        tmp_path, spawn, redis_prefix):
    from processes import RedisServer

    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        a, b = await gateways(spawn, tmp_path, redis.url, redis_prefix)
        caller, callee = await peer_on(a, tmp_path), await peer_on(b, tmp_path)
        await within(callee.register(lambda: "answered", "app.quick"))
        mark = a.process.mark
        await redis.stop()
        await a.process.line(r"redis writes connection lost", after=mark)
        error = await call_error(caller.call("app.quick"))  # not queued where the bus might drop it
        assert error.error == "eform.error.unavailable"
        await redis.start()
        await reconnected(a, mark)
        await reconnected(b, mark)
        assert await within(caller.call("app.quick")) == "answered"
        await leave(caller, callee)
    finally:
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_callee_is_interrupted_when_its_callers_process_dies_even_while_status_is_read(
        tmp_path, spawn, redis_url, redis_prefix):
    from test_redis import get
    from twisted.internet.task import deferLater

    a, b, caller, callee = await two(spawn, tmp_path, redis_url, redis_prefix)  # A registers nothing
    invoked, interrupted = await pending_procedure(callee, "app.slow")
    caller.call("app.slow").addErrback(lambda _: None)
    await within(invoked)
    a.process.transport.signalProcess(signal.SIGKILL)
    for _ in range(100):  # a load balancer reading B's status (which used to forget A's id)
        if interrupted.called:
            break
        status, _ = await get(b, "/api/websocket/status")
        assert status == 200
        await deferLater(reactor, 0.1, lambda: None)
    await within(interrupted)
    await leave(callee)
