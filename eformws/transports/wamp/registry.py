"""Who serves each procedure in the whole deployment: one record per registration (its id,
invoke policy and callees as node and session), in Redis (scripts) or in this process."""

from __future__ import annotations

import json

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.logger import Logger

from eformws.backends.redis import Script, command_connection

log = Logger(namespace="eformws.wamp.registry")

# Outcomes of a claim and a release.
CREATED, JOINED, ALREADY, EXISTS = "created", "joined", "already", "exists"
LEFT, DELETED, ABSENT = "left", "deleted", "absent"

PROGRESSIVE, CANCELING, REVOCATION = 1, 2, 4  # what a callee announced (flags)


def field(uri: str, match: str) -> str:
    """A record's name: URIs hold no spaces."""
    return f"{match} {uri}"


def new_record(uri, match, invoke, registration_id, created, callee) -> dict:
    return {"id": registration_id, "uri": uri, "match": match, "invoke": invoke, "created": created,
            "callees": [callee]}


class LocalRegistry:
    """The registrations of a deployment of one process: decided here, at once."""

    shared = False

    def __init__(self):
        self._records: dict[str, dict] = {}

    def claim(self, uri, match, invoke, node, session, flags, registration_id, created):
        name = field(uri, match)
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = new_record(uri, match, invoke, registration_id, created, [node, session, flags])
            return succeed((CREATED, record))
        if any(c[0] == node and c[1] == session for c in record["callees"]):
            return succeed((ALREADY, record))
        if invoke == "single" or record["invoke"] != invoke:
            return succeed((EXISTS, record))
        record = dict(record, callees=[*record["callees"], [node, session, flags]])
        self._records[name] = record
        return succeed((JOINED, record))

    def release(self, uri, match, node, session):
        name = field(uri, match)
        record = self._records.get(name)
        if record is None:
            return succeed((ABSENT, None))
        callees = [c for c in record["callees"] if not (c[0] == node and c[1] == session)]
        if len(callees) == len(record["callees"]):
            return succeed((ABSENT, record))
        if not callees:
            del self._records[name]
            return succeed((DELETED, record))
        record = self._records[name] = dict(record, callees=callees)
        return succeed((LEFT, record))

    def get(self, uri, match):
        return succeed(self._records.get(field(uri, match)))

    def load(self):
        return succeed(list(self._records.values()))


# Records are JSON with ids as strings: Redis's cjson keeps 14 digits of a number.
# KEYS: the records' hash, the set of nodes with callees. ARGV: field, node, session,
# flags, invoke, id, created, uri, match.
CLAIM = Script(
    "#!lua\n"
    "local v = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "local callee = {ARGV[2], ARGV[3], tonumber(ARGV[4])}\n"
    "if not v then\n"
    "  v = cjson.encode({id=ARGV[6], uri=ARGV[8], match=ARGV[9], invoke=ARGV[5], created=ARGV[7], callees={callee}})\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], v)\n"
    "  redis.call('SADD', KEYS[2], ARGV[2])\n"
    "  return {'created', v}\n"
    "end\n"
    "local r = cjson.decode(v)\n"
    "for _, c in ipairs(r.callees) do\n"
    "  if c[1] == ARGV[2] and c[2] == ARGV[3] then return {'already', v} end\n"
    "end\n"
    "if ARGV[5] == 'single' or r.invoke ~= ARGV[5] then return {'exists', v} end\n"
    "table.insert(r.callees, callee)\n"
    "v = cjson.encode(r)\n"
    "redis.call('HSET', KEYS[1], ARGV[1], v)\n"
    "redis.call('SADD', KEYS[2], ARGV[2])\n"
    "return {'joined', v}\n"
)

# KEYS: the records' hash. ARGV: field, node, session. Returns the outcome and the record
# after it (deleted: as it was).
RELEASE = Script(
    "#!lua\n"
    "local v = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not v then return {'absent', ''} end\n"
    "local r = cjson.decode(v)\n"
    "local kept = {}\n"
    "for _, c in ipairs(r.callees) do\n"
    "  if not (c[1] == ARGV[2] and c[2] == ARGV[3]) then table.insert(kept, c) end\n"
    "end\n"
    "if #kept == #r.callees then return {'absent', v} end\n"
    "if #kept == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return {'deleted', v} end\n"
    "r.callees = kept\n"
    "v = cjson.encode(r)\n"
    "redis.call('HSET', KEYS[1], ARGV[1], v)\n"
    "return {'left', v}\n"
)

# KEYS: the records' hash, the set of nodes with callees, the node list. ARGV: the node
# entries' key prefix, then the nodes missing last time. A node missing now and last time
# (its entry expired: it stopped beating) is dead: out of both sets, its callees out of
# every record. Returns {missing now..., '', dead..., '', field, record before, record
# after or '', ...}.
PURGE = Script(
    "#!lua\n"
    "local suspects, missing, dead, seen = {}, {}, {}, {}\n"
    "for i = 2, #ARGV do suspects[ARGV[i]] = true end\n"
    "for _, key in ipairs({KEYS[2], KEYS[3]}) do\n"
    "  for _, n in ipairs(redis.call('SMEMBERS', key)) do\n"
    "    if not seen[n] then\n"
    "      seen[n] = true\n"
    "      if redis.call('EXISTS', ARGV[1] .. n) == 0 then\n"
    "        table.insert(missing, n)\n"
    "        if suspects[n] then dead[n] = true end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {}\n"
    "for _, n in ipairs(missing) do table.insert(out, n) end\n"
    "table.insert(out, '')\n"
    "local any = false\n"
    "for n, _ in pairs(dead) do\n"
    "  any = true\n"
    "  table.insert(out, n)\n"
    "  redis.call('SREM', KEYS[2], n)\n"
    "  redis.call('SREM', KEYS[3], n)\n"
    "end\n"
    "table.insert(out, '')\n"
    "if not any then return out end\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "for i = 1, #all, 2 do\n"
    "  local r = cjson.decode(all[i + 1])\n"
    "  local kept = {}\n"
    "  for _, c in ipairs(r.callees) do if not dead[c[1]] then table.insert(kept, c) end end\n"
    "  if #kept < #r.callees then\n"
    "    table.insert(out, all[i])\n"
    "    table.insert(out, all[i + 1])\n"
    "    if #kept == 0 then\n"
    "      redis.call('HDEL', KEYS[1], all[i])\n"
    "      table.insert(out, '')\n"
    "    else\n"
    "      r.callees = kept\n"
    "      local v = cjson.encode(r)\n"
    "      redis.call('HSET', KEYS[1], all[i], v)\n"
    "      table.insert(out, v)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n"
)


def decoded(text) -> dict | None:
    """A record from its JSON in Redis (ids back to numbers); None for none or a bad one."""
    if not text:
        return None
    try:
        record = json.loads(text)
        record["id"] = int(record["id"])
        record["callees"] = [[str(c[0]), int(c[1]), int(c[2])] for c in record["callees"]]
        return record
    except (ValueError, KeyError, TypeError, IndexError):
        log.warn("ignored a malformed wamp registration record in redis")
        return None


class RedisRegistry(MultiService):
    """The deployment's registrations in one Redis hash, changed only by scripts (so a
    procedure has one registration, `procedure_already_exists` holding across processes).
    Every `interval` it looks for processes that stopped beating (NodeRegistry's entries)
    and takes their callees out; `on_purged(dead nodes, [(before, after)])` hears of it.
    `on_connected()` runs on each (re)connect (the router reads the records again).

    `redis` is the process's connection for small requests, or an address."""

    shared = True

    def __init__(self, redis, prefix: str, interval: float, ttl: float, initial_delay: float = 0.5,
                 max_delay: float = 10.0, reactor=None):
        super().__init__()
        self.prefix = prefix
        self.key = f"{prefix}wamp:registrations"
        self.nodes_key = f"{prefix}wamp:callee_nodes"
        self.ttl = ttl
        self.connection = command_connection(self, redis, "wamp registry", initial_delay, max_delay)
        self.on_purged = None
        self.on_connected = None
        self.on_tick = None
        self.connection.on_connected.append(self._connected)
        self._suspects: list[str] = []
        self._quiet_until = 0.0
        self._reactor = reactor
        TimerService(interval, self._tick).setServiceParent(self)

    def _connected(self, _) -> None:
        """After an outage every process's entry may have expired, and each gets back in
        its own time: judge nobody for a `ttl` (a live one writes its entry within it)."""
        self._suspects = []
        self._quiet_until = self._clock().seconds() + self.ttl
        if self.on_connected is not None:
            self.on_connected()

    def _tick(self):
        if self.on_tick is not None:
            self.on_tick()
        return self.purge()

    def _clock(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def claim(self, uri, match, invoke, node, session, flags, registration_id, created):
        d = CLAIM.run(self.connection, [self.key, self.nodes_key],
                      [field(uri, match), node, str(session), flags, invoke, str(registration_id), created, uri, match])
        return d.addCallback(lambda reply: (reply[0], decoded(reply[1])))

    def release(self, uri, match, node, session):
        d = RELEASE.run(self.connection, [self.key], [field(uri, match), node, str(session)])
        return d.addCallback(lambda reply: (reply[0], decoded(reply[1])))

    def get(self, uri, match):
        return self.connection.command("HGET", self.key, field(uri, match)).addCallback(decoded)

    @inlineCallbacks
    def load(self):
        found = yield self.connection.command("HGETALL", self.key)
        values = found.values() if isinstance(found, dict) else (found or [])[1::2]
        return [record for record in map(decoded, values) if record is not None]

    @inlineCallbacks
    def purge(self):
        """Take the callees of dead processes out (a process is dead once its entry is
        missing on two looks in a row: a starting one writes it within a heartbeat)."""
        if not self.connection.connected or self._clock().seconds() < self._quiet_until:
            return
        try:
            reply = yield PURGE.run(self.connection, [self.key, self.nodes_key, f"{self.prefix}nodes"],
                                    [f"{self.prefix}node:", *self._suspects])
        except Exception as e:
            log.warn("wamp registry purge failed: {error}", error=str(e).split("\r")[0][:200])
            return
        first = reply.index("")
        second = reply.index("", first + 1)
        self._suspects = list(reply[:first])
        dead = list(reply[first + 1:second])
        rest = reply[second + 1:]
        changes = [(decoded(rest[i + 1]), decoded(rest[i + 2])) for i in range(0, len(rest) - 2, 3)]
        if dead:
            log.info("wamp registry: {count} stopped process(es) forgotten, {changed} registrations changed",
                     count=len(dead), changed=len(changes))
            if self.on_purged is not None:
                self.on_purged(dead, changes)
