"""The event log of several processes: one Redis Stream whose entry ids are consecutive seqs
(`<seq>-0`) of an epoch, appended by a Lua script (deadline, idempotency key, epoch, seq and
entry in one atomic write) and read in order by every process, which delivers from it."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, deque

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, fail, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eformws.backends.redis import (
    RedisUnavailable,
    Script,
    WritePause,
    address_of,
    check_durability,
    command_connection,
    reading_connection,
    retry_delay,
    retryable_reply,
)
from eformws.events.store import (
    Appended,
    IdempotencyConflict,
    IEventStore,
    Position,
    bound,
    decoded,
    new_epoch,
    parse_cursor,
    resumption,
    statistics,
    stored,
)

log = Logger(namespace="eformws.store.redis")

SCAN_BATCH = 500
READ_BATCH = 1000
MAX_IN_FLIGHT = 256  # appends sent and not yet answered (pipelined on one connection)
SCANS_AT_ONCE = 8  # log scans (catch-up, recent, sweep) under way at once: each holds up to SCAN_BATCH entries
INTERNAL_KEY_LIFETIME = 30.0  # seconds an append without a producer's key is remembered

# The epoch, the seq counter and the newest entry's nonce live in a hash beside the stream.
# Both are made together: when either is missing (a new deployment, the stream deleted or
# evicted, Redis restarted empty) a new epoch begins. So does one when the log went back in
# time (Redis restarted from an older snapshot, a failover to a lagging replica): seqs of the
# epoch would be used twice. `base` is the seq an epoch starts after: above the stream's top
# (its ids only grow) and above any seq a process had seen (`floor`). Every entry carries its
# own nonce (`v`) and the one of the entry before it (`u`), so a reader that finds an entry
# not following the one it delivered knows the log is not the one it was reading.
_EPOCHS = """
local function top(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XADD', stream, 'MAXLEN', '0', '0-1', 'p', '')
    return 0
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return tonumber(string.match(info[i + 1], '^(%d+)')) end
  end
  return 0
end
local function renew(stream, meta, candidate, floor)
  local base = math.max(top(stream), floor)
  redis.call('DEL', meta)
  redis.call('HSET', meta, 'epoch', candidate, 'seq', base, 'base', base, 'last', '')
  return candidate
end
local function ensure(stream, meta, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch and redis.call('EXISTS', stream) == 1 then return epoch end
  return renew(stream, meta, candidate, 0)
end
"""

# KEYS: stream, meta, key record. ARGV: deadline (ms of Redis's clock), a candidate epoch,
# max length, envelope, addresses, created, expires, fingerprint ('-': no producer key),
# key lifetime (ms), this entry's nonce, the epoch and seq this process has seen, the
# idempotency window (ms; 0: no producer key) and the envelope's id. Answers {'ok', seq, epoch}, {'dup', record} or {'late'}.
APPEND = Script(
    "#!lua\n" + _EPOCHS + """
local stream, meta, record = KEYS[1], KEYS[2], KEYS[3]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local prior = redis.call('GET', record)
if prior then
  -- Written before: say so, whatever the time; except that an idempotency key whose window
  -- has passed is free again for another append (the record outlives the window only so
  -- that resends of the append that wrote it are still answered as done).
  local p = cjson.decode(prior)
  local forget_at = tonumber(p[5] or 0)
  if not (forget_at > 0 and now_ms > forget_at and p[6] ~= ARGV[14]) then return {'dup', prior} end
end
if now_ms > tonumber(ARGV[1]) then
  return {'late'}
end
local epoch = ensure(stream, meta, ARGV[2])
local seen = tonumber(ARGV[12])
if epoch == ARGV[11] and tonumber(redis.call('HGET', meta, 'seq')) < seen then
  epoch = renew(stream, meta, ARGV[2], seen)  -- gone back in time
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local before = redis.call('HGET', meta, 'last') or ''
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], seq .. '-0',
           'e', ARGV[4], 'a', ARGV[5], 'c', ARGV[6], 'x', ARGV[7], 'p', epoch, 'u', before, 'v', ARGV[10])
redis.call('HSET', meta, 'last', ARGV[10])
local body = ''
if ARGV[8] ~= '-' then body = ARGV[4] end
local forget_at = 0
if tonumber(ARGV[13]) > 0 then forget_at = now_ms + tonumber(ARGV[13]) end
redis.call('SET', record, cjson.encode({ARGV[8], tostring(seq), epoch, body, forget_at, ARGV[14]}), 'PX', ARGV[9])
return {'ok', tostring(seq), epoch}
"""
)

# KEYS: stream, meta. ARGV: a seq S (0: none). Answers {epoch (nil when none), newest seq,
# base, whether the stream exists, the newest nonce, the `u` of entry S + 1 (nil when it is
# not there)}. Reads only, so Redis runs it even while it refuses writes.
STATE = Script(
    "#!lua flags=no-writes\n"
    "local state = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'base', 'last')\n"
    "local after = false\n"
    "if tonumber(ARGV[1]) > 0 then\n"
    "  local next = redis.call('XRANGE', KEYS[1], (ARGV[1] + 1) .. '-0', (ARGV[1] + 1) .. '-0')\n"
    "  if next[1] then\n"
    "    local fields = next[1][2]\n"
    "    for i = 1, #fields, 2 do if fields[i] == 'u' then after = fields[i + 1] end end\n"
    "  end\n"
    "end\n"
    "return {state[1], state[2], state[3], redis.call('EXISTS', KEYS[1]), state[4], after}\n"
)

# KEYS: stream, meta. ARGV: a candidate epoch. Answers {epoch, newest seq, base, nonce}.
ENSURE = Script(
    "#!lua\n" + _EPOCHS + """
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
local state = redis.call('HMGET', KEYS[2], 'seq', 'base', 'last')
return {epoch, state[1], state[2], state[3]}
"""
)

# KEYS: stream, meta. ARGV: a candidate epoch, the epoch found gone back in time, the seq the
# new one must start above. A new epoch, unless another process made it already. Answers
# {epoch, newest seq, base, nonce}.
RENEW = Script(
    "#!lua\n" + _EPOCHS + """
if redis.call('HGET', KEYS[2], 'epoch') == ARGV[2] then renew(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[3])) end
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
local state = redis.call('HMGET', KEYS[2], 'seq', 'base', 'last')
return {epoch, state[1], state[2], state[3]}
"""
)


class EmitTimeout(RedisUnavailable):
    """The event was not written within `redis.emit_timeout` and never will be."""


class EmitUnconfirmed(RedisUnavailable):
    """The write was sent but its answer did not come within `redis.emit_timeout`: it was
    stored (and is delivered) or not; a retry with the same Idempotency-Key tells."""


def new_nonce() -> str:
    """What marks one entry, for the entry after it to name (8 hex digits)."""
    return uuid.uuid4().hex[:8]


def _went_back(seq: int, last: str, after: str | None, known: int, nonce: str | None) -> bool:
    """Whether a log whose newest seq is `seq` (nonce `last`; `after`: the `u` of the entry
    after `known`) went back behind the entry `known` (nonce `nonce`) a process delivered."""
    if seq < known:
        return True
    if nonce is None:
        return False
    if seq == known:
        return last != nonce
    return after is not None and after != nonce


def _fields(flat) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def _seq_of(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class _Append:
    """One append on its way: what to write, by when, and who waits for it."""

    __slots__ = ("envelope", "addresses", "created", "expires", "idempotency", "deadline", "deferred", "sent", "timer")

    def __init__(self, envelope, addresses, created, expires, idempotency, deadline):
        self.envelope = envelope
        self.addresses = addresses
        self.created = created
        self.expires = expires
        self.idempotency = idempotency
        self.deadline = deadline
        self.deferred = Deferred()
        self.sent = False  # may have been written: sent, and not refused since
        self.timer = None

    @property
    def done(self) -> bool:
        return self.deferred.called

    def settle(self, result) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if not self.deferred.called:
            if isinstance(result, (Exception, Failure)):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)


@implementer(IEventStore)
class RedisEventStore(MultiService):
    """Appends wait in order (at most `buffer_size`) while Redis is unreachable or refuses
    writes, each until its deadline (`emit_timeout`); Redis itself refuses one that arrives
    late, so an emit that failed with EmitTimeout is never written afterwards."""

    def __init__(self, redis, prefix: str, max_events: int, buffer_size: int, emit_timeout: float = 5.0,
                 initial_delay: float = 0.5, max_delay: float = 10.0, clock=time.time, block_ms: int = 2000,
                 reactor=None, queries=None):
        super().__init__()
        self.stream = f"{prefix}events"
        self.meta = f"{prefix}events:log"
        self.key_prefix = f"{prefix}events:key:"
        self.health_key = f"{prefix}events:health"
        self.max_events = max_events
        self.buffer_size = buffer_size
        self.emit_timeout = emit_timeout
        self.block_ms = block_ms
        self._clock = clock
        self._reactor = reactor
        self._backoff = (initial_delay, max_delay)
        self.connection = command_connection(self, redis, "event store", initial_delay, max_delay)
        self.connection.on_connected.append(lambda _: self._writer_connected())
        self.queries = command_connection(self, queries if queries is not None else address_of(redis),
                                          "event log queries", initial_delay, max_delay)
        self._scans = DeferredSemaphore(SCANS_AT_ONCE)
        self.reader = reading_connection(self, redis, "event log reader", initial_delay, max_delay, block_ms)
        self.reader.on_connected.append(lambda _: self._read())
        self._queue: deque[_Append] = deque()
        self._pending: set[_Append] = set()  # queued or in flight, until settled
        self._requeued = 0
        self._in_flight = 0
        self._offset: float | None = None  # Redis's clock minus ours, measured on each connect
        self.pause = WritePause("writes to the event log", self._pump, initial_delay, max_delay, reactor)
        self._checked = False
        # following the log
        self._on_event = None
        self._on_reset = None
        self._followers: list[Deferred] = []
        self.position: Position | None = None
        self._nonce: str | None = None  # the nonce of the entry at `position`
        self._seen: Position | None = None  # the newest seq this process has read or written
        self._last_id = "0-0"  # the id of the last entry read
        self._reading = False
        self._read_failures = 0
        self._retry_read = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- appends -------------------------------------------------------------------

    def append(self, envelope, addresses, ttl, idempotency=None):
        if len(self._pending) >= self.buffer_size:
            return fail(RedisUnavailable("event store: redis unreachable and the outage buffer is full"))
        now = self._clock()
        item = _Append(envelope, list(addresses), now, now + ttl, idempotency, now + self.emit_timeout)
        item.timer = self.reactor.callLater(self.emit_timeout, self._too_late, item)
        item.deferred.addBoth(self._settled, item)
        self._pending.add(item)
        self._queue.append(item)
        self._pump()
        return item.deferred

    def _settled(self, result, item: _Append):
        self._pending.discard(item)
        return result

    def _too_late(self, item: _Append) -> None:
        item.timer = None
        if item.sent:
            item.settle(EmitUnconfirmed(
                "redis did not confirm the write in time: it may have been stored (then it is delivered); "
                "retry with the same Idempotency-Key to know"
            ))
        else:
            item.settle(EmitTimeout("redis did not take the write in time; it was not stored"))

    def _writer_connected(self) -> None:
        d = self.connection.command("TIME")

        def measured(reply):
            seconds, micros = reply
            self._offset = int(seconds) + int(micros) / 1e6 - self._clock()
            self._pump()

        d.addCallbacks(measured, lambda _: None)
        if not self._checked:
            self._checked = True
            check_durability(self.connection)

    def _pump(self) -> None:
        while (self._queue and self._in_flight < MAX_IN_FLIGHT and self._offset is not None
               and not self.pause.paused and self.connection.connected and self.running):
            item = self._queue.popleft()
            self._requeued = 0  # answers to what is in flight now come after this one was sent
            if not item.done:
                self._send(item)

    def _send(self, item: _Append) -> None:
        idempotency = item.idempotency
        # The record must outlive every resend of this append (they stop at its deadline).
        lifetime = max(INTERNAL_KEY_LIFETIME, 2 * self.emit_timeout)
        if idempotency is not None:
            record, mark, lifetime = idempotency.digest, idempotency.fingerprint, max(lifetime, idempotency.window)
        else:
            record, mark = "id:" + item.envelope["id"], "-"
        item.sent = True
        self._in_flight += 1
        seen = self._seen or Position("", 0)
        d = APPEND.run(
            self.connection,
            [self.stream, self.meta, self.key_prefix + record],
            [
                int((item.deadline + self._offset) * 1000), new_epoch(), self.max_events,
                json.dumps(item.envelope, separators=(",", ":")), json.dumps(item.addresses, separators=(",", ":")),
                repr(item.created), repr(item.expires), mark, int(lifetime * 1000),
                new_nonce(), seen.epoch, seen.seq,
                0 if idempotency is None else int(idempotency.window * 1000), item.envelope["id"],
            ],
        )
        d.addBoth(self._answered, item)

    def _answered(self, result, item: _Append) -> None:
        self._in_flight -= 1
        if isinstance(result, Failure):
            if retryable_reply(result.value) or result.check(RedisUnavailable):
                # Not written (a refusal), or unknown (the connection dropped): sent again,
                # which the key record makes safe, until its deadline.
                if retryable_reply(result.value):
                    item.sent = False  # refused: certainly not written
                    self.pause.refused(result.value)
                if not item.done:
                    self._queue.insert(self._requeued, item)
                    self._requeued += 1
                return
            log.failure("event store append failed", result)
            item.settle(result)
        else:
            self.pause.accepted()
            item.settle(self._outcome(result, item))
        self._pump()

    def _outcome(self, reply, item: _Append):
        kind = reply[0]
        if kind == "ok":
            self._saw(Position(reply[2], int(reply[1])))
            return Appended(stored(item.envelope, Position(reply[2], int(reply[1]))))
        if kind == "late":
            return EmitTimeout("redis took the write after its deadline and refused it; it was not stored")
        mark, seq, epoch, body = json.loads(reply[1])[:4]
        first = item.envelope if item.idempotency is None else json.loads(body)
        if first["id"] == item.envelope["id"]:  # our own resend of a write that had been done
            self._saw(Position(epoch, int(seq)))
            return Appended(stored(item.envelope, Position(epoch, int(seq))))
        if mark != item.idempotency.fingerprint:
            return IdempotencyConflict(item.idempotency.key)
        return Appended(stored(first, Position(epoch, int(seq))), replayed=True)

    # -- following the log ---------------------------------------------------------

    def follow(self, on_event, on_reset):
        self._on_event, self._on_reset = on_event, on_reset
        d = Deferred()
        if self.position is not None:
            d.callback(self.position)
        else:
            self._followers.append(d)
        self._read()
        return d

    def _saw(self, position: Position) -> None:
        """Keep the newest position this process knows of (a floor for going back in time)."""
        if self._seen is None or position.epoch != self._seen.epoch or position.seq > self._seen.seq:
            self._seen = position

    @inlineCallbacks
    def _state(self, connection):
        """(epoch, newest seq, base, newest nonce) of the log, once it is sure to be the log
        this process has been reading: when there is none, or when it went back in time
        behind what this process delivered, a new epoch is made."""
        known, nonce = self.position, self._nonce
        epoch, seq, base, exists, last, after = yield STATE.run(
            connection, [self.stream, self.meta], [known.seq if known is not None else 0]
        )
        if epoch is None or not int(exists):
            epoch, seq, base, last = yield ENSURE.run(connection, [self.stream, self.meta], [new_epoch()])
        elif known is not None and epoch == known.epoch and _went_back(int(seq), last or "", after, known.seq, nonce):
            log.warn("the event log went back in time (Redis lost writes: restarted from an older copy, or a "
                     "failover): a new epoch starts above seq {seq}", seq=known.seq)
            epoch, seq, base, last = yield RENEW.run(
                connection, [self.stream, self.meta], [new_epoch(), epoch, max(known.seq, int(seq))]
            )
        return epoch, int(seq), int(base), last or ""

    @inlineCallbacks
    def _read(self):
        if self._reading or self._on_event is None or not self.running or not self.reader.connected:
            return
        self._reading = True
        self._retry_read = None
        try:
            yield self._check_epoch()
            while self.running and self.reader.connected and self._on_event is not None:
                reply = yield self.reader.command(
                    "XREAD", "BLOCK", self.block_ms, "COUNT", READ_BATCH, "STREAMS", self.stream, self._last_id,
                )
                if not reply:
                    yield self._check_epoch()  # nothing for a while: was the log replaced?
                for _, entries in reply or ():
                    for entry_id, flat in entries:
                        if not self._read_entry(entry_id, flat):
                            yield self._check_epoch()  # it does not follow what was delivered
                            break
            self._read_failures = 0
        except Exception as e:
            if self.running and self.reader.connected:
                # Not a lost connection (that restarts reading on reconnect): try again soon.
                self._read_failures += 1
                delay = retry_delay(self._read_failures, *self._backoff)
                log.warn("reading the event log failed ({error}); again in {delay:.1f} s",
                         error=str(e).split("\r")[0][:200] or type(e).__name__, delay=delay)
                self._retry_read = self.reactor.callLater(delay, self._read)
            elif self.running:
                log.warn("reading the event log stopped ({error}); resumes on reconnect", error=type(e).__name__)
        finally:
            self._reading = False

    @inlineCallbacks
    def _check_epoch(self):
        epoch, seq, base, last = yield self._state(self.reader)
        if self.position is None:
            self.position = Position(epoch, seq)
            self._nonce = last
            self._saw(self.position)
            self._last_id = f"{seq}-0"
            log.info("following the event log from seq {seq}", seq=seq)
            followers, self._followers = self._followers, []
            for d in followers:
                if not d.called:
                    d.callback(self.position)
        elif epoch != self.position.epoch:
            self._reset(Position(epoch, base), "the event log was replaced (a new epoch)")

    def _reset(self, position: Position, why: str, nonce: str = "") -> None:
        log.warn("event delivery cannot go on in order: {why}; connections are closed so that clients resume",
                 why=why)
        self.position = position
        self._nonce = nonce
        self._saw(position)
        self._last_id = f"{position.seq}-0"
        if self._on_reset is not None:
            self._on_reset(position, why)

    def _read_entry(self, entry_id: str, flat) -> bool:
        """Deliver one entry; False when it does not follow what was delivered before it (the
        log went back in time), which is then not delivered."""
        seq = _seq_of(entry_id)
        fields = _fields(flat)
        epoch = fields.get("p")
        if epoch is None:
            self._last_id = entry_id
            return True  # written before the log had epochs (an upgrade): not part of it
        try:
            envelope = decoded(fields["e"], seq)
            created = float(fields["c"])
        except (KeyError, TypeError, ValueError):
            envelope = None
        if envelope is None:
            log.warn("skipped a malformed entry of the event log (seq {seq})", seq=seq)
            self._last_id = entry_id
            if epoch == self.position.epoch and seq == self.position.seq + 1:
                self.position, self._nonce = Position(epoch, seq), fields.get("v", "")
            return True
        if epoch != self.position.epoch:
            self._reset(Position(epoch, seq - 1), "the event log was replaced (a new epoch)", fields.get("u", ""))
        elif seq != self.position.seq + 1:
            self._reset(Position(epoch, seq - 1), f"events {self.position.seq + 1} to {seq - 1} were removed unread",
                        fields.get("u", ""))
        elif fields.get("u", self._nonce) != self._nonce:
            return False
        self._last_id = entry_id
        self.position, self._nonce = Position(epoch, seq), fields.get("v", "")
        self._saw(self.position)
        try:
            self._on_event(stored(envelope, self.position), created)
        except Exception:
            log.failure("delivering an event failed")
        return True

    # -- reads ---------------------------------------------------------------------

    @inlineCallbacks
    def _latest(self):
        epoch, seq, _, _ = yield self._state(self.queries)
        return Position(epoch, seq)

    def since(self, cursor, epoch, event_filter, limit, upto=None):
        return self._scans.run(self._since, cursor, epoch, event_filter, limit, upto)

    @inlineCallbacks
    def _since(self, cursor, epoch, event_filter, limit, upto):
        latest = yield self._latest()
        upto_seq = bound(upto, latest)
        since = parse_cursor(cursor)
        found: list = []
        complete = True
        if since is not None and since < upto_seq and (epoch is None or epoch == latest.epoch):
            now = self._clock()
            expected = since + 1
            while expected <= upto_seq and complete and len(found) <= limit:
                batch = yield self.queries.command(
                    "XRANGE", self.stream, f"{expected}-0", f"{upto_seq}-0", "COUNT", SCAN_BATCH
                )
                if not batch:
                    complete = False  # the newest were removed
                for entry_id, flat in batch:
                    fields = _fields(flat)
                    if _seq_of(entry_id) != expected or fields.get("p") != latest.epoch:
                        complete = False  # removed (trimmed, expired and swept) or of another log
                        break
                    expected += 1
                    if event_filter.matches(tuple(a) for a in json.loads(fields["a"])):
                        if float(fields["x"]) <= now:
                            complete = False  # expired by its type's TTL: the client missed it
                            break
                        envelope = decoded(fields["e"], _seq_of(entry_id))
                        if envelope is not None:
                            found.append(stored(envelope, Position(latest.epoch, _seq_of(entry_id))))
        return resumption(cursor, epoch, latest, 0, lambda _, n: (found[:n], complete), limit)

    def recent(self, event_filter, window, limit, now=None, upto=None):
        return self._scans.run(self._recent, event_filter, window, limit, now, upto)

    @inlineCallbacks
    def _recent(self, event_filter, window, limit, now, upto):
        latest = yield self._latest()
        now = self._clock() if now is None else now
        found: list = []
        end = f"{bound(upto, latest)}-0"
        while len(found) < limit:
            batch = yield self.queries.command("XREVRANGE", self.stream, end, "-", "COUNT", SCAN_BATCH)
            for entry_id, flat in batch:
                fields = _fields(flat)
                created = float(fields.get("c", 0))
                if fields.get("p") != latest.epoch or created < now - window:
                    return found[::-1]
                if float(fields["x"]) > now and (
                    event_filter is None or event_filter.matches(tuple(a) for a in json.loads(fields["a"]))
                ):
                    envelope = decoded(fields["e"], _seq_of(entry_id))
                    if envelope is not None:
                        found.append(stored(envelope, Position(latest.epoch, _seq_of(entry_id))))
                    if len(found) >= limit:
                        break
            if len(batch) < SCAN_BATCH:
                break
            end = "(" + batch[-1][0]
        return found[::-1]

    def _scan(self):
        """Every entry, oldest first, in batches (for expiry and statistics)."""
        return self._scans.run(self._scan_all)

    @inlineCallbacks
    def _scan_all(self):
        entries = []
        start = "-"
        while True:
            batch = yield self.queries.command("XRANGE", self.stream, start, "+", "COUNT", SCAN_BATCH)
            entries.extend(batch)
            if len(batch) < SCAN_BATCH:
                return entries
            start = "(" + batch[-1][0]

    @inlineCallbacks
    def expire(self, now=None):
        now = self._clock() if now is None else now
        expired = [entry_id for entry_id, flat in (yield self._scan()) if float(_fields(flat).get("x", 0)) <= now]
        for start in range(0, len(expired), SCAN_BATCH):
            yield self.queries.command("XDEL", self.stream, *expired[start:start + SCAN_BATCH])
        # Appends trim roughly (MAXLEN ~, whole blocks at a time); the sweep trims exactly.
        trimmed = yield self.queries.command("XTRIM", self.stream, "MAXLEN", "=", self.max_events)
        return len(expired) + int(trimmed)

    @inlineCallbacks
    def stats(self):
        now = self._clock()
        live = []
        for _, flat in (yield self._scan()):
            fields = _fields(flat)
            if "e" in fields and float(fields["x"]) > now:
                live.append((json.loads(fields["e"]), float(fields["c"])))
        return statistics(
            len(live),
            dict(Counter(e["namespace"] for e, _ in live)),
            dict(Counter(e["type"] for e, _ in live)),
            live[0][1] if live else None,
            live[-1][1] if live else None,
        )

    @inlineCallbacks
    def ping(self):
        """Redis answers and takes writes: a small write of its own tells, also when no
        append is waiting to find out; and the connection catch-ups read on answers."""
        try:
            yield self.connection.command("SET", self.health_key, "1", "PX", 60_000)
        except Exception as e:
            if not retryable_reply(e):
                raise
            self.pause.refused(e)
            raise RedisUnavailable(f"redis refuses writes: {self.pause.error}") from None
        self.pause.accepted()
        yield self.queries.command("PING")

    def startService(self):
        super().startService()
        self._pump()  # what was appended before the start, if the connection is up already

    @inlineCallbacks
    def stopService(self):
        """Appends not sent yet fail at once (not stored); those sent wait for their answer
        or their deadline (EmitUnconfirmed), at most `emit_timeout`: a caller is never told
        "not stored" of an event that may be in the log."""
        for item in list(self._queue):
            if not item.sent:
                item.settle(RedisUnavailable("the gateway is stopping; the event was not stored"))
        self._queue.clear()
        self.pause.cancel()
        if self._retry_read is not None and self._retry_read.active():
            self._retry_read.cancel()
        self._retry_read = None
        answers = [self._settling(item) for item in list(self._pending)]
        if answers:
            yield DeferredList(answers)
        yield super().stopService()

    @staticmethod
    def _settling(item: _Append) -> Deferred:
        """Fires (with None) once `item` is settled, whatever its outcome."""
        d = Deferred()
        item.deferred.addBoth(lambda result: (d.callback(None), result)[1])
        return d
