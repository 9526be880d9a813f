"""The event stores on their own (docs/events.md, "Persistence, replay and resume"), each of
memory, SQLite and Redis: seqs and epochs, ordered and batched appends, TTL expiry, the size
cap, statistics, the address filter of `since` and `recent`, the resume rule, epochs and the
`upto` bound, idempotency keys, following the log, and what a restart keeps (the SQLite file
and Redis's keys keep the log; the memory store starts a new one)."""

from __future__ import annotations

import pytest
import pytest_twisted
from conftest import until_redis_clock_passes
from twisted.internet import defer, reactor

from eformws import events
from eformws.backends.redis import RedisAddress
from eformws.backends.sqlite import SQLiteDatabase
from eformws.core import wire
from eformws.events.store import EventFilter, Idempotency, IdempotencyConflict, Position, addresses_of, fingerprint
from eformws.events.store.memory import MemoryEventStore
from eformws.events.store.redis import RedisEventStore
from eformws.events.store.sqlite import SQLiteEventStore

T0 = 1_700_000_000.0  # the fake clock's start
CREATED_AT = "2024-01-15T10:30:00.000Z"

LOCKERS = EventFilter("/ws/lockers", frozenset({"locker_updates"}))
HELP = EventFilter("/ws/help", frozenset({"help_requests"}))
EVENTS = EventFilter("/ws/events", frozenset({"system_events"}))


class Clock:
    """A clock the test moves by hand: `clock()` is the store's time."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def locker(kiosk="kiosk-1", locker_id=None, **extra) -> dict:
    data = {"lockerId": locker_id or f"{kiosk}:12", "oldState": "closed", "newState": "open", "kioskId": kiosk}
    data.update(extra)
    return events.build("locker_state_changed", data, T0)


def help_request(kiosk="kiosk-1") -> dict:
    data = {"id": 17, "kiosk_id": kiosk, "category": "other", "status": "open",
            "created_at": CREATED_AT, "priority": "low"}
    return events.build("help_requested", data, T0)


def system_status() -> dict:
    return events.build("system_status", {"component": "gateway", "status": "online", "health_score": 90}, T0)


def append(store, envelope, ttl=3600.0, idempotency=None):
    """Append with the addresses the real emit path would give the envelope; fires with
    the stored envelope."""
    d = store.append(envelope, addresses_of(events.targets_of(envelope)), ttl, idempotency)
    return d.addCallback(lambda appended: appended.envelope)


def seqs(envelopes) -> list[int]:
    return [int(e["seq"]) for e in envelopes]


def at(envelope) -> Position:
    """Where a stored envelope sits in its log."""
    return Position(envelope["epoch"], int(envelope["seq"]))


# -- the stores under test ------------------------------------------------------------------


class SQLiteStores:
    """SQLite event stores on one file under tmp_path; each `open` is a fresh start of
    the database service, as a process restart would do it."""

    def __init__(self, path):
        self.path = str(path)
        self.databases: list[SQLiteDatabase] = []

    def open(self, clock, max_events=100_000) -> SQLiteEventStore:
        database = SQLiteDatabase(self.path)
        database.startService()
        self.databases.append(database)
        return SQLiteEventStore(database, max_events, clock)

    def close(self):
        """Stop the newest running database; fires once its connection is closed."""
        database = self.databases[-1]
        return database.stopService() if database.running else defer.succeed(None)

    def close_all(self):
        return defer.gatherResults([d.stopService() for d in self.databases if d.running])


@pytest.fixture
def sqlite_stores(tmp_path):
    stores = SQLiteStores(tmp_path / "events.db")
    yield stores
    pytest_twisted.blockon(stores.close_all())


class RedisStores:
    """Redis event stores under one key prefix of the suite's Redis, started as services; each
    `open` is another process (or a restart of one) on the same log."""

    def __init__(self, url: str, prefix: str):
        self.address = RedisAddress.parse(url)
        self.prefix = prefix
        self.started: list[RedisEventStore] = []

    def open(self, clock, max_events=100_000) -> RedisEventStore:
        store = RedisEventStore(self.address, self.prefix, max_events, 10_000, 5.0, clock=clock, block_ms=200)
        store.startService()
        self.started.append(store)
        return store

    def close(self):
        """Stop the newest running store (a process stopping); fires once it has."""
        store = self.started[-1]
        return defer.maybeDeferred(store.stopService) if store.running else defer.succeed(None)

    def close_all(self):
        return defer.gatherResults([defer.maybeDeferred(s.stopService) for s in self.started if s.running])


class Opener:
    """`make_store(clock, max_events=...)`, saying which kind of store it makes."""

    def __init__(self, kind: str, open_):
        self.kind = kind
        self._open = open_

    def __call__(self, clock, max_events=100_000):
        return self._open(clock, max_events)


@pytest.fixture(params=["sqlite", "memory", "redis"])
def make_store(request, tmp_path):
    """`make_store(clock, max_events=...)`: a store of the parametrized kind (`.kind`)."""
    if request.param == "memory":
        yield Opener("memory", lambda clock, max_events=100_000: MemoryEventStore(max_events, clock))
        return
    if request.param == "redis":
        stores = RedisStores(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    else:
        stores = SQLiteStores(tmp_path / "events.db")
    yield Opener(request.param, stores.open)
    pytest_twisted.blockon(stores.close_all())


# The memory store keeps nothing across a restart (every start is a new epoch, by design:
# eformws/events/store/memory.py): what a restart keeps is a contract of the stores that persist only.
@pytest.fixture(params=["sqlite", "redis"])
def persistent_stores(request, tmp_path):
    """`.open(clock, max_events=...)` a store, `.close()` the newest (a process restart is
    a close and an open), on one SQLite file or one Redis key prefix."""
    if request.param == "redis":
        stores = RedisStores(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    else:
        stores = SQLiteStores(tmp_path / "events.db")
    yield stores
    pytest_twisted.blockon(stores.close_all())


# -- appends ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_append_gets_a_higher_seq(make_store):
    store = make_store(Clock())
    got = []
    for _ in range(5):
        got.append(await append(store, locker()))
    assert all(isinstance(e["seq"], str) for e in got)
    numbers = seqs(got)
    assert numbers == sorted(numbers) and len(set(numbers)) == 5


@pytest_twisted.ensureDeferred
async def test_append_fires_with_a_copy_carrying_the_seq(make_store):
    store = make_store(Clock())
    envelope = locker()
    stored = await append(store, envelope)
    assert envelope["seq"] is None and envelope["epoch"] is None
    assert stored == {**envelope, "seq": stored["seq"], "epoch": stored["epoch"]}
    assert isinstance(stored["epoch"], str) and stored["epoch"]
    assert list(stored) == list(envelope)


@pytest_twisted.ensureDeferred
async def test_many_appends_made_at_once_complete_in_the_order_made(make_store):
    store = make_store(Clock())
    made = [locker(locker_id=f"kiosk-1:{n}") for n in range(300)]
    completed = []
    pending = []
    for envelope in made:
        d = append(store, envelope)
        d.addCallback(lambda stored: completed.append(stored) or stored)
        pending.append(d)
    results = await defer.gatherResults(pending)
    assert [e["id"] for e in completed] == [e["id"] for e in made]
    assert [e["id"] for e in results] == [e["id"] for e in made]
    numbers = seqs(completed)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(made)
    missed = await store.since("0", None, LOCKERS, 1000)
    assert [e["id"] for e in missed.events] == [e["id"] for e in made]


# SQLite only: how its appends are batched (Redis pipelines them on one connection instead);
# what every store owes a burst is the test above.
@pytest_twisted.ensureDeferred
async def test_a_burst_of_appends_is_written_in_few_transactions(sqlite_stores):
    store = sqlite_stores.open(Clock())
    database = sqlite_stores.databases[-1]
    calls = []
    run = database.run

    def counting_run(fn, *args):
        calls.append(fn)
        return run(fn, *args)

    database.run = counting_run
    await defer.gatherResults([append(store, locker()) for _ in range(200)])
    assert 1 <= len(calls) <= 3, f"{len(calls)} transactions for 200 appends made at once"


@pytest_twisted.ensureDeferred
async def test_an_event_comes_back_exactly_as_it_was_stored(make_store):
    store = make_store(Clock())
    metadata = {"note": "Kapı açık ✓ \"quoted\"", "ratio": 0.1, "big": 2**53 + 1, "nested": [None, True, {"z": 1, "a": 2}]}
    stored = await append(store, locker(metadata=metadata))
    [replayed] = await store.recent(LOCKERS, 3600, 10)
    assert wire.dumps(replayed) == wire.dumps(stored)
    [missed] = (await store.since("0", None, LOCKERS, 10)).events
    assert wire.dumps(missed) == wire.dumps(stored)


# -- expiry and the size cap -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_expire_removes_only_the_expired_events(make_store):
    clock = Clock()
    store = make_store(clock)
    short1 = await append(store, locker(), ttl=10)
    long_ = await append(store, locker(), ttl=100)
    short2 = await append(store, locker(), ttl=10)
    assert await store.expire(now=T0 + 9.5) == 0
    assert await store.expire(now=T0 + 50) == 2
    left = await store.recent(None, 10_000, 100, now=T0 + 50)
    assert [e["id"] for e in left] == [long_["id"]]
    assert short1["id"] != short2["id"]
    assert (await store.stats())["total_events"] == 1


@pytest_twisted.ensureDeferred
async def test_expire_uses_the_store_clock_when_no_time_is_given(make_store):
    clock = Clock()
    store = make_store(clock)
    await append(store, locker(), ttl=10)
    assert await store.expire() == 0
    clock.now = T0 + 11
    assert await store.expire() == 1


@pytest_twisted.ensureDeferred
async def test_the_size_cap_keeps_the_newest_events(make_store):
    store = make_store(Clock(), max_events=10)
    stored = [await append(store, locker()) for _ in range(15)]
    await store.expire(now=T0)
    assert (await store.stats())["total_events"] == 10
    left = await store.recent(None, 3600, 100, now=T0)
    assert seqs(left) == seqs(stored[5:])


@pytest_twisted.ensureDeferred
async def test_resume_from_before_the_size_cap_is_not_recovered(make_store):
    store = make_store(Clock(), max_events=10)
    stored = [await append(store, locker()) for _ in range(15)]
    await store.expire(now=T0)
    found = await store.since(stored[0]["seq"], None, LOCKERS, 1000)
    assert (found.recovered, found.events, found.latest) == (False, [], at(stored[-1]))


@pytest_twisted.ensureDeferred
async def test_resume_from_the_newest_deleted_event_is_recovered(make_store):
    store = make_store(Clock(), max_events=10)
    stored = [await append(store, locker()) for _ in range(15)]
    await store.expire(now=T0)
    found = await store.since(stored[4]["seq"], None, LOCKERS, 1000)
    assert found.recovered is True
    assert seqs(found.events) == seqs(stored[5:])


@pytest_twisted.ensureDeferred
async def test_resume_from_before_an_expired_event_is_not_recovered(make_store):
    store = make_store(Clock())
    first = await append(store, locker(), ttl=10)
    await append(store, locker(), ttl=10)
    await append(store, locker(), ttl=1000)
    await store.expire(now=T0 + 20)
    found = await store.since(first["seq"], None, LOCKERS, 1000)
    assert (found.recovered, found.events) == (False, [])


# -- statistics -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stats_count_events_by_namespace_and_type(make_store):
    clock = Clock()
    store = make_store(clock)
    assert await store.stats() == {
        "total_events": 0,
        "events_by_namespace": {},
        "events_by_type": {},
        "oldest_event": None,
        "newest_event": None,
    }
    await append(store, locker())
    clock.now = T0 + 1.5
    await append(store, locker())
    await append(store, help_request())
    clock.now = T0 + 7.25
    await append(store, system_status())
    assert await store.stats() == {
        "total_events": 4,
        "events_by_namespace": {"/ws/lockers": 2, "/ws/help": 1, "/ws/events": 1},
        "events_by_type": {"locker_state_changed": 2, "help_requested": 1, "system_status": 1},
        "oldest_event": wire.js_timestamp(T0),
        "newest_event": wire.js_timestamp(T0 + 7.25),
    }


# -- the address filter ---------------------------------------------------------------------


async def _mixed(store) -> dict:
    """One event of each addressing kind, by name."""
    return {
        "locker_k1": await append(store, locker("kiosk-1")),
        "locker_k2": await append(store, locker("kiosk-2")),
        "help_k1": await append(store, help_request("kiosk-1")),
        "system": await append(store, system_status()),
    }


FILTER_CASES = [
    (LOCKERS, ["locker_k1", "locker_k2"]),
    (EventFilter("/ws/lockers", frozenset({"kiosk-1"})), ["locker_k1"]),
    (EventFilter("/ws/lockers", frozenset({"kiosk-1", "locker_updates"})), ["locker_k1", "locker_k2"]),
    (HELP, ["help_k1"]),
    (EventFilter("/ws/help", frozenset({"kiosk-2"})), []),
    (EVENTS, ["locker_k1", "locker_k2", "help_k1", "system"]),
    (EventFilter("/ws/events", frozenset({"kiosk-2"})), ["locker_k2"]),
    (EventFilter("/ws/lockers", frozenset({"help_requests"})), []),
    (EventFilter("/ws/custom", frozenset({"locker_updates"})), []),
    (EventFilter("/ws/lockers", frozenset()), []),
]


@pytest.mark.parametrize("event_filter,expected", FILTER_CASES)
@pytest_twisted.ensureDeferred
async def test_since_returns_only_events_addressed_to_the_namespace_and_rooms(make_store, event_filter, expected):
    store = make_store(Clock())
    stored = await _mixed(store)
    found = await store.since("0", None, event_filter, 100)
    assert found.recovered is True
    assert [e["id"] for e in found.events] == [stored[name]["id"] for name in expected]


@pytest.mark.parametrize("event_filter,expected", FILTER_CASES)
@pytest_twisted.ensureDeferred
async def test_recent_returns_only_events_addressed_to_the_namespace_and_rooms(make_store, event_filter, expected):
    store = make_store(Clock())
    stored = await _mixed(store)
    found = await store.recent(event_filter, 3600, 100, now=T0)
    assert [e["id"] for e in found] == [stored[name]["id"] for name in expected]


@pytest_twisted.ensureDeferred
async def test_recent_without_a_filter_returns_every_event(make_store):
    store = make_store(Clock())
    stored = await _mixed(store)
    found = await store.recent(None, 3600, 100, now=T0)
    assert [e["id"] for e in found] == [e["id"] for e in stored.values()]


# -- recent: window and limit ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_recent_returns_the_newest_events_up_to_the_limit_oldest_first(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(8)]
    stored.insert(3, await append(store, help_request()))  # not for LOCKERS: must not use up the limit
    found = await store.recent(LOCKERS, 3600, 5, now=T0)
    assert seqs(found) == seqs([e for e in stored if e["type"] == "locker_state_changed"][-5:])


@pytest_twisted.ensureDeferred
async def test_recent_leaves_out_events_older_than_the_window(make_store):
    clock = Clock()
    store = make_store(clock)
    await append(store, locker())
    clock.now = T0 + 20
    newer = [await append(store, locker()), await append(store, locker())]
    found = await store.recent(LOCKERS, 10, 50, now=T0 + 25)
    assert seqs(found) == seqs(newer)
    at_edge = await store.recent(LOCKERS, 25, 50, now=T0 + 25)
    assert len(at_edge) == 3


@pytest_twisted.ensureDeferred
async def test_recent_uses_the_store_clock_when_no_time_is_given(make_store):
    clock = Clock()
    store = make_store(clock)
    await append(store, locker())
    assert len(await store.recent(LOCKERS, 10, 50)) == 1
    clock.now = T0 + 11
    assert await store.recent(LOCKERS, 10, 50) == []


# -- since: the resume rule -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_since_returns_the_events_after_the_cursor_in_order(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(6)]
    found = await store.since(stored[2]["seq"], None, LOCKERS, 100)
    assert found.recovered is True
    assert seqs(found.events) == seqs(stored[3:])
    assert found.latest == at(stored[-1])


@pytest_twisted.ensureDeferred
async def test_since_the_latest_seq_is_recovered_with_nothing_missed(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(3)]
    found = await store.since(stored[-1]["seq"], None, LOCKERS, 100)
    assert (found.recovered, found.events, found.latest) == (True, [], at(stored[-1]))


@pytest_twisted.ensureDeferred
async def test_since_reports_the_store_latest_seq_even_when_the_filter_matches_nothing_after(make_store):
    store = make_store(Clock())
    mine = await append(store, locker())
    other = await append(store, system_status())
    found = await store.since(mine["seq"], None, LOCKERS, 100)
    assert (found.recovered, found.events, found.latest) == (True, [], at(other))


@pytest.mark.parametrize("cursor", ["999999", "abc", "", "-1", "1.5", None, True, "9" * 40])
@pytest_twisted.ensureDeferred
async def test_since_an_unknown_cursor_is_not_recovered(make_store, cursor):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(3)]
    found = await store.since(cursor, None, LOCKERS, 100)
    assert (found.recovered, found.events, found.latest) == (False, [], at(stored[-1]))


@pytest_twisted.ensureDeferred
async def test_since_answers_the_first_limit_events_and_says_more_follow(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(6)]
    found = await store.since("0", None, LOCKERS, 5)
    assert (found.recovered, found.events, found.more) == (True, stored[:5], True)
    rest = await store.since(stored[4]["seq"], stored[4]["epoch"], LOCKERS, 5)
    assert (rest.recovered, rest.events, rest.more) == (True, stored[5:], False)


@pytest_twisted.ensureDeferred
async def test_since_with_exactly_limit_events_says_none_follow(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(5)]
    found = await store.since("0", None, LOCKERS, 5)
    assert (found.recovered, found.events, found.more) == (True, stored, False)


@pytest_twisted.ensureDeferred
async def test_an_empty_store_recovers_from_seq_zero(make_store):
    store = make_store(Clock())
    found = await store.since("0", None, LOCKERS, 100)
    assert (found.recovered, found.events, found.latest.seq) == (True, [], 0)


# -- idempotency keys ---------------------------------------------------------------------


def key_for(envelope, key="order-1", window=600.0) -> Idempotency:
    return Idempotency(key, fingerprint(envelope["type"], envelope["data"]), window)


def appended_with(store, envelope, idempotency, ttl=3600.0):
    """Fires with the store's `Appended` (envelope and whether it was a repeat)."""
    return store.append(envelope, addresses_of(events.targets_of(envelope)), ttl, idempotency)


@pytest_twisted.ensureDeferred
async def test_a_repeat_with_the_same_idempotency_key_stores_nothing_and_answers_the_first_envelope(make_store):
    store = make_store(Clock())
    first = await appended_with(store, locker(), key_for(locker()))
    retry = locker()  # a producer's retry: the same type and data, a new envelope
    again = await appended_with(store, retry, key_for(retry))
    assert (first.replayed, again.replayed) == (False, True)
    assert wire.dumps(again.envelope) == wire.dumps(first.envelope)
    assert (await store.stats())["total_events"] == 1
    found = await store.since("0", None, LOCKERS, 100)
    assert [e["id"] for e in found.events] == [first.envelope["id"]]


@pytest_twisted.ensureDeferred
async def test_two_appends_with_the_same_idempotency_key_made_at_once_store_one_event(make_store):
    store = make_store(Clock())
    one, two = await defer.gatherResults([appended_with(store, e, key_for(e)) for e in (locker(), locker())])
    assert (one.replayed, two.replayed) == (False, True)
    assert (two.envelope["id"], two.envelope["seq"]) == (one.envelope["id"], one.envelope["seq"])
    assert (await store.stats())["total_events"] == 1


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_used_for_another_event_is_a_conflict_and_stores_nothing(make_store):
    store = make_store(Clock())
    await appended_with(store, locker(), key_for(locker()))
    other = locker(newState="closed", oldState="open")
    with pytest.raises(IdempotencyConflict):
        await appended_with(store, other, key_for(other))
    assert (await store.stats())["total_events"] == 1


@pytest_twisted.ensureDeferred
async def test_another_idempotency_key_stores_another_event(make_store):
    store = make_store(Clock())
    first = await appended_with(store, locker(), key_for(locker(), "order-1"))
    second = await appended_with(store, locker(), key_for(locker(), "order-2"))
    assert second.replayed is False and int(second.envelope["seq"]) > int(first.envelope["seq"])


WINDOW = 0.05  # seconds (the configuration takes 1 s and up; the stores take any window)


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_is_forgotten_after_its_window(make_store):
    clock = Clock()
    store = make_store(clock)
    first = await appended_with(store, locker(), key_for(locker(), window=WINDOW))
    clock.now = T0 + WINDOW + 0.5  # memory and SQLite measure the window on the store's clock,
    if make_store.kind == "redis":  # Redis on its own
        await until_redis_clock_passes(store.connection, WINDOW * 1000)
    other = locker(newState="closed", oldState="open")  # the key, reused for another event
    later = await appended_with(store, other, key_for(other, window=WINDOW))
    assert later.replayed is False and int(later.envelope["seq"]) > int(first.envelope["seq"])


# -- following the log ----------------------------------------------------------------------


class Follower:
    """What `follow` hands over, with a Deferred for "the event with this id has come"."""

    def __init__(self):
        self.events: list[tuple[dict, float]] = []
        self.resets: list = []
        self._waiting: dict[str, defer.Deferred] = {}

    def event(self, envelope, created) -> None:
        self.events.append((envelope, created))
        d = self._waiting.pop(envelope["id"], None)
        if d is not None:
            d.callback(None)

    def reset(self, position, why) -> None:
        self.resets.append((position, why))

    def came(self, envelope) -> defer.Deferred:
        if any(e["id"] == envelope["id"] for e, _ in self.events):
            return defer.succeed(None)
        d = self._waiting[envelope["id"]] = defer.Deferred()
        return d.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_following_starts_at_the_newest_event_and_hands_over_each_later_event_once_in_seq_order(make_store):
    clock = Clock()
    store = make_store(clock)
    before = [await append(store, locker()) for _ in range(2)]
    follower = Follower()
    start = await store.follow(follower.event, follower.reset)
    assert start == at(before[-1])
    clock.now = T0 + 2.5
    made = await defer.gatherResults([append(store, locker(locker_id=f"kiosk-1:{n}")) for n in range(20)])
    marker = await append(store, system_status())  # everything appended before it comes before it
    await follower.came(marker)
    assert [e["id"] for e, _ in follower.events] == [e["id"] for e in made + [marker]]
    assert [wire.dumps(e) for e, _ in follower.events[:-1]] == [wire.dumps(e) for e in made]
    assert {created for _, created in follower.events} == {T0 + 2.5}
    assert follower.resets == []


@pytest_twisted.ensureDeferred
async def test_following_an_empty_log_starts_at_seq_zero(make_store):
    store = make_store(Clock())
    start = await store.follow(Follower().event, lambda position, why: None)
    assert start.seq == 0 and start.epoch


# -- epochs and the upper bound -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_since_a_cursor_of_another_epoch_is_not_recovered(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(3)]
    found = await store.since(stored[0]["seq"], "0123456789abcdef", LOCKERS, 100)
    assert (found.recovered, found.events, found.latest) == (False, [], at(stored[-1]))
    same = await store.since(stored[0]["seq"], stored[0]["epoch"], LOCKERS, 100)
    assert (same.recovered, seqs(same.events)) == (True, seqs(stored[1:]))


@pytest_twisted.ensureDeferred
async def test_since_and_recent_answer_nothing_past_upto(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(5)]
    found = await store.since("0", None, LOCKERS, 100, at(stored[2]))
    assert (found.recovered, seqs(found.events), found.more) == (True, seqs(stored[:3]), False)
    assert found.latest == at(stored[-1])
    assert seqs(await store.recent(LOCKERS, 3600, 100, now=T0, upto=at(stored[2]))) == seqs(stored[:3])


@pytest_twisted.ensureDeferred
async def test_an_upto_of_another_epoch_is_no_bound(make_store):
    store = make_store(Clock())
    stored = [await append(store, locker()) for _ in range(3)]
    elsewhere = Position("0123456789abcdef", 1)
    found = await store.since("0", None, LOCKERS, 100, elsewhere)
    assert seqs(found.events) == seqs(stored)
    assert seqs(await store.recent(LOCKERS, 3600, 100, now=T0, upto=elsewhere)) == seqs(stored)


@pytest_twisted.ensureDeferred
async def test_ping_answers_when_the_store_works(make_store):
    store = make_store(Clock())
    await append(store, locker())
    await store.ping()


# -- what a restart keeps (SQLite file, Redis keys; the memory store keeps nothing) ----------


@pytest_twisted.ensureDeferred
async def test_events_survive_closing_and_reopening_the_store(persistent_stores):
    store = persistent_stores.open(Clock())
    stored = [await append(store, locker()), await append(store, help_request())]
    await persistent_stores.close()
    reopened = persistent_stores.open(Clock())
    found = await reopened.since("0", None, EVENTS, 100)
    assert [wire.dumps(e) for e in found.events] == [wire.dumps(e) for e in stored]
    assert (await reopened.stats())["total_events"] == 2


@pytest_twisted.ensureDeferred
async def test_seq_keeps_increasing_after_a_restart_when_the_newest_events_were_deleted(persistent_stores):
    store = persistent_stores.open(Clock())
    kept = await append(store, locker(), ttl=1000)
    deleted = [await append(store, locker(), ttl=10) for _ in range(3)]
    assert await store.expire(now=T0 + 20) == 3
    await persistent_stores.close()
    reopened = persistent_stores.open(Clock(T0 + 20))
    after = await append(reopened, locker())
    assert after["epoch"] == kept["epoch"]
    assert int(after["seq"]) > int(deleted[-1]["seq"]) > int(kept["seq"])
    found = await reopened.since(deleted[-1]["seq"], None, LOCKERS, 100)
    assert (found.recovered, seqs(found.events)) == (True, [int(after["seq"])])


@pytest_twisted.ensureDeferred
async def test_history_lost_before_a_restart_is_still_not_recovered_after_it(persistent_stores):
    store = persistent_stores.open(Clock(), max_events=3)
    stored = [await append(store, locker()) for _ in range(6)]
    await store.expire(now=T0)
    await persistent_stores.close()
    reopened = persistent_stores.open(Clock(), max_events=3)
    lost = await reopened.since(stored[0]["seq"], None, LOCKERS, 100)
    assert (lost.recovered, lost.events) == (False, [])
    kept = await reopened.since(stored[2]["seq"], None, LOCKERS, 100)
    assert (kept.recovered, seqs(kept.events)) == (True, seqs(stored[3:]))


@pytest_twisted.ensureDeferred
async def test_a_restarted_memory_store_is_a_new_log_where_old_cursors_are_not_recovered():
    store = MemoryEventStore(100_000, Clock())
    stored = [await append(store, locker()) for _ in range(3)]
    restarted = MemoryEventStore(100_000, Clock())
    found = await restarted.since(stored[0]["seq"], stored[0]["epoch"], LOCKERS, 100)
    assert (found.recovered, found.events) == (False, [])
    assert found.latest.epoch != stored[0]["epoch"]
