"""Retained events kept in Redis for the processes that start later: each topic's last one
(capped like a process's own), written by the publishing process, read by a starting one."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from eformws.backends.redis import Script, command_connection

log = Logger(namespace="eformws.wamp.retained")

# KEYS: topic -> encoded event (hash), topics by age (sorted set), counters (hash: seq,
# bytes). ARGV: topic, encoded event, most topics, most bytes. The oldest go past a cap.
SAVE = Script(
    "#!lua\n"
    "local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[3], 'seq', 1), ARGV[1])\n"
    "local bytes = redis.call('HINCRBY', KEYS[3], 'bytes', #ARGV[2] - old)\n"
    "while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[3]) or bytes > tonumber(ARGV[4]) do\n"
    "  local oldest = redis.call('ZPOPMIN', KEYS[2])\n"
    "  if #oldest == 0 then break end\n"
    "  bytes = redis.call('HINCRBY', KEYS[3], 'bytes', -redis.call('HSTRLEN', KEYS[1], oldest[1]))\n"
    "  redis.call('HDEL', KEYS[1], oldest[1])\n"
    "end\n"
    "return bytes\n"
)


class RedisRetained(MultiService):
    """`save(topic, encoded)` keeps a topic's last retained event; once connected the first
    time, `on_loaded({topic: encoded})` gets what earlier processes kept (oldest first), and
    `loaded` fires (also when the read failed: it is tried again on the next connection)."""

    def __init__(self, redis, prefix: str, max_topics: int, max_bytes: int,
                 initial_delay: float = 0.5, max_delay: float = 10.0):
        super().__init__()
        self.keys = [f"{prefix}wamp:retained", f"{prefix}wamp:retained:age", f"{prefix}wamp:retained:counters"]
        self.max_topics, self.max_bytes = max_topics, max_bytes
        self.connection = command_connection(self, redis, "wamp retained", initial_delay, max_delay)
        self.on_loaded = None
        self.loaded = Deferred()
        self._loaded = False
        self.connection.on_connected.append(lambda _: self._load())

    def save(self, topic: str, encoded: bytes):
        d = SAVE.run(self.connection, self.keys, [topic, encoded, self.max_topics, self.max_bytes])
        d.addErrback(lambda failure: log.warn("a retained event on {topic} was not kept for processes that start "
                                              "later: {error}", topic=topic, error=failure.getErrorMessage()[:200]))
        return d

    def _load(self):
        if self._loaded:
            return None
        self._loaded = True
        d = self.connection.command("ZRANGE", self.keys[1], 0, -1)

        def read(topics):
            if not topics:
                return {}
            return self.connection.command("HMGET", self.keys[0], *topics).addCallback(
                lambda values: {t: v for t, v in zip(topics, values) if v is not None})

        def loaded(found):
            if found and self.on_loaded is not None:
                self.on_loaded(found)

        def failed(failure):
            self._loaded = False  # read on the next connection
            log.warn("retained events of earlier processes not read: {error}", error=failure.getErrorMessage()[:200])

        d.addCallback(read).addCallbacks(loaded, failed)
        d.addCallback(lambda _: None if self.loaded.called else self.loaded.callback(None))
        return d
