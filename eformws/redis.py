"""Connections to Redis (txredisapi): the URL, a reconnecting command connection with capped
exponential backoff and jitter, its state for /healthz, and a key prefix for one deployment."""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.logger import Logger

log = Logger(namespace="eformws.redis")


class RedisUnavailable(ConnectionError):
    """Redis does not answer now; the caller keeps going and retries later."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        """`redis://[:password@]host[:port][/db]`; ValueError naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"must look like redis://host:port/db, got {url!r}")
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"database must be a number, got {db_text!r}")
        return cls(parts.hostname, parts.port or 6379, int(db_text), parts.password)


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Seconds before reconnect attempt `attempt` (1, 2, ...): exponential from `initial`,
    capped at `cap`, with "equal jitter" (half fixed, half random) so that many processes
    do not reconnect in step after an outage, and none waits longer than the cap."""
    delay = min(cap, initial * 2 ** min(attempt - 1, 64))
    return delay / 2 + random.uniform(0, delay / 2)


class RedisConnection(Service):
    """One reconnecting connection. `command(*args)` fails at once with RedisUnavailable
    while disconnected instead of waiting; `on_connected` callbacks run on each (re)connect."""

    def __init__(self, address: RedisAddress, name: str, initial_delay: float, max_delay: float,
                 reply_timeout: float | None = 10.0, startup_wait: float = 5.0):
        self.address = address
        self.name = name
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.reply_timeout = reply_timeout
        self.factory = None
        self.handler = None
        self.on_connected: list = []
        self.on_disconnected: list = []
        self.last_error: str | None = "not connected yet"
        self._waiting: list[Deferred] = []
        self._ever_connected = False
        self.startup_wait = startup_wait

    @property
    def connected(self) -> bool:
        return self.factory is not None and self.factory.size > 0

    def startService(self):
        super().startService()
        import txredisapi
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint

        owner = self

        class Factory(txredisapi.RedisFactory):
            def retryDelay(self, attempt):
                return backoff_delay(attempt, owner.initial_delay, owner.max_delay)

            def addConnection(self, conn):
                super().addConnection(conn)
                if conn.connected:
                    owner._connected(conn)

            def delConnection(self, conn):
                super().delConnection(conn)
                owner._disconnected()

        address = self.address
        self.factory = Factory(
            f"{address.host}:{address.port}", address.db, 1, isLazy=True,
            password=address.password, replyTimeout=self.reply_timeout, convertNumbers=False,
        )
        self.handler = self.factory.handler
        self.factory.startConnecting(HostnameEndpoint(reactor, address.host, address.port, timeout=5))

    def _connected(self, conn):
        if self.last_error is not None:
            log.info("redis {name} connected to {host}:{port}", name=self.name, host=self.address.host, port=self.address.port)
        self.last_error = None
        self._ever_connected = True
        for callback in list(self.on_connected):
            callback(conn)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    def when_connected(self) -> Deferred:
        """Fires once connected (at once if connected now)."""
        if self.connected:
            return succeed(self)
        d = Deferred(lambda d: self._waiting.remove(d) if d in self._waiting else None)
        self._waiting.append(d)
        return d

    def _disconnected(self):
        if self.factory.size == 0:
            if self.last_error is None:
                log.warn("redis {name} connection lost; retrying with backoff", name=self.name)
            self.last_error = "connection lost"
            for callback in list(self.on_disconnected):
                callback()

    def command(self, *args, **kwargs):
        """The reply; RedisUnavailable at once while disconnected, or when the connection
        is lost (or times out) before the reply, so callers handle one outage error."""
        if not self.connected:
            if self._ever_connected or not self.running:
                return fail(RedisUnavailable(f"redis {self.name}: {self.last_error}"))
            return self._after_first_connection(args, kwargs)
        d = self.handler.execute_command(*args, **kwargs)
        d.addErrback(self._lost)
        return d

    def _after_first_connection(self, args, kwargs):
        """At start-up (never connected yet) a command waits up to `startup_wait` for the
        first connection rather than failing: a process that has just started (a restarted
        worker) would otherwise refuse its first clients while Redis is fine."""
        from twisted.internet import reactor

        d = self.when_connected()
        d.addTimeout(self.startup_wait, reactor)

        def run(_):
            return self.command(*args, **kwargs)

        def unavailable(failure):
            failure.trap(TimeoutError, CancelledError)
            raise RedisUnavailable(f"redis {self.name}: {self.last_error}")

        d.addCallbacks(run, unavailable)
        return d

    def _lost(self, failure):
        import txredisapi

        if failure.check(txredisapi.ConnectionError, ConnectionError):
            raise RedisUnavailable(f"redis {self.name}: {failure.getErrorMessage()}")
        return failure

    def stopService(self):
        super().stopService()
        if self.factory is None:
            return None
        d = self.factory.disconnect()
        d.addErrback(lambda _: None)
        return d
