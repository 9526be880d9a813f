"""Adversarial: the resume/live hand-off when the resume is not recovered (recovered:false)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from tests.test_event_log import LOCKERS, emit, messages_until, settled


@pytest_twisted.ensureDeferred
async def test_a_not_recovered_resume_sends_events_that_arrive_during_it_only_once(start_server):
    # recovered:false (another epoch) replays what is held; live events delivered while the
    # since() query runs are held; the replay asked afterwards already contains them.
    server = await start_server({"events.replay_limit": 50})
    session_id = await server.session()
    before = [await emit(server, n) for n in range(3)]
    store = server.service.event_store
    real_since, answer, asked = store.since, defer.Deferred(), defer.Deferred()

    def since(*args):
        del store.since
        asked.callback(args)
        return answer

    store.since = since
    client = await server.connect(f"{LOCKERS}?sessionId={session_id}&since=1&epoch=another-log")
    args = await asked
    during = [await emit(server, n) for n in range(10, 13)]  # delivered live while the resume runs: held
    answer.callback(await real_since(*args))
    got = await messages_until(client, "resumed")
    got += await settled(client)
    seqs = [m["seq"] for m in got if "seq" in m]
    assert seqs == [e["seq"] for e in before + during], seqs  # each once, in order
