"""Connections to Redis (txredisapi): the URL, a reconnecting connection with capped
exponential backoff and jitter, its state for /healthz, Lua scripts, the pause after a
refused write, and the settings check."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.logger import Logger

from eformws.core.backoff import EQUAL_JITTER, backoff_delay
from eformws.core.deferreds import shielded

log = Logger(namespace="eformws.redis")


class RedisUnavailable(ConnectionError):
    """Redis does not answer now; the caller keeps going and retries later."""


# Error replies after which the command did not run and may be sent again later: out of
# memory (maxmemory with noeviction), loading its data after a restart, a script running,
# a replica that refuses writes.
RETRYABLE_REPLIES = ("OOM", "LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "NOREPLICAS")


def retryable_reply(error: BaseException) -> bool:
    """Whether `error` is a Redis error reply for a command that did not run (see above)."""
    import txredisapi

    return isinstance(error, txredisapi.ResponseError) and str(error).startswith(RETRYABLE_REPLIES)


class Script:
    """A Lua script run with EVALSHA, loaded with EVAL the first time Redis does not know it.
    Scripts start with `#!lua` (no flags): Redis then refuses the whole script, before it
    runs, while it is over `maxmemory`, so a script writes everything or nothing."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def run(self, connection: "RedisConnection", keys, args):
        keys, args = list(keys), list(args)
        d = connection.command("EVALSHA", self.sha, len(keys), *keys, *args)

        def unknown(failure):
            import txredisapi

            if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
                return connection.command("EVAL", self.source, len(keys), *keys, *args)
            return failure

        d.addErrback(unknown)
        return d


DURABILITY_ADVICE = "docs/operations.md, 'Redis settings'"


def durability_warnings(settings: dict) -> list[str]:
    """What in Redis's `CONFIG GET` answers can lose accepted events or sessions."""
    warnings = []
    policy = settings.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        warnings.append(
            f"maxmemory-policy is {policy}: Redis may evict sessions and the event log under memory "
            "pressure; set noeviction (emits then fail with 503 instead of losing data)"
        )
    if settings.get("appendonly") == "no":
        warnings.append(
            "appendonly is no: a Redis restart loses the sessions and the event log, or brings back an "
            "older snapshot of them (clients then resume with recovered:false); set appendonly yes"
        )
    elif settings.get("appendonly") == "yes" and settings.get("appendfsync") == "no":
        warnings.append("appendfsync is no: a Redis crash can lose accepted events; use everysec or always")
    return warnings


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


def retry_delay(failures: int, initial: float, cap: float) -> float:
    """Seconds before the next try after `failures` (1, 2, ...) in a row: exponential from
    `initial`, capped at `cap`, with "equal jitter" (half fixed, half random) so that many
    processes do not reconnect in step after an outage, and none waits longer than the cap."""
    return backoff_delay(failures - 1, initial, cap, floor=EQUAL_JITTER)


@contextmanager
def quiet_client_services():
    """Twisted's ClientService logs a line per reconnection attempt ("Scheduling retry N to
    connect ..."): those made meanwhile (txredisapi makes one per pooled connection) get a
    Logger that drops its events; RedisConnection says what matters once per change."""
    from twisted.application.internet import ClientService

    loud = ClientService.__dict__.get("_log")
    ClientService._log = Logger(observer=lambda event: None)
    try:
        yield
    finally:
        if loud is None:
            del ClientService._log
        else:
            ClientService._log = loud


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
        self._said_down = False
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
                if attempt == 1:
                    owner._down()  # the first failed attempt in a row, or a loss: a change of state
                return retry_delay(attempt, owner.initial_delay, owner.max_delay)

            def addConnection(self, conn):
                super().addConnection(conn)
                if conn.connected:
                    owner._connected(conn)

            def delConnection(self, conn):
                super().delConnection(conn)
                owner._disconnected()

            def stopTrying(self):
                # txredisapi gives up for good when AUTH or SELECT fails, a connection lost
                # during them included (a proxy that accepts while Redis is down): only
                # stopping the service stops reconnecting.
                if owner.running:
                    return succeed(None)
                return super().stopTrying()

        address = self.address
        self.factory = Factory(
            f"{address.host}:{address.port}", address.db, 1, isLazy=True,
            password=address.password, replyTimeout=self.reply_timeout, convertNumbers=False,
        )
        self.handler = self.factory.handler
        # The first connection's outcome; a failure there is logged and retried here, not raised.
        self.factory.deferred.addErrback(lambda _: None)
        with quiet_client_services():  # one line of ours per change of state, not one per retry
            self.factory.startConnecting(HostnameEndpoint(reactor, address.host, address.port, timeout=5))

    def _down(self) -> None:
        """One warning per change of state: `connection lost` when a connection that worked
        goes away (whichever of its loss and the first retry comes first), `cannot reach`
        when none could be made since the start. Said once, until a connection is made again;
        not at all while stopping."""
        if self._said_down or not self.running:
            return
        self._said_down = True
        fields = dict(name=self.name, host=self.address.host, port=self.address.port, max_delay=self.max_delay)
        if self.last_error is None:
            log.warn("redis {name} connection lost ({host}:{port}); retrying with backoff (up to {max_delay:g} s apart)",
                     **fields)
        else:
            log.warn("redis {name} cannot reach {host}:{port}; retrying with backoff (up to {max_delay:g} s apart)",
                     **fields)

    def _connected(self, conn):
        if self._said_down:
            if self._ever_connected:
                log.warn("redis {name} reached {host}:{port} again", name=self.name, host=self.address.host,
                         port=self.address.port)
            else:  # unreachable since the start: this is its first connection
                log.warn("redis {name} reached {host}:{port}", name=self.name, host=self.address.host,
                         port=self.address.port)
        elif self.last_error is not None:
            log.info("redis {name} connected to {host}:{port}", name=self.name, host=self.address.host, port=self.address.port)
        self._said_down = False
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
            self._down()
            self.last_error = "connection lost"
            for callback in list(self.on_disconnected):
                callback()

    def command(self, *args, **kwargs):
        """The reply; RedisUnavailable at once while disconnected, or when the connection
        is lost (or times out) before the reply, so callers handle one outage error. A
        caller that gives up (cancels, as /healthz does after 2 s) leaves the command to
        run: cancelling txredisapi's Deferred would also stop its no-reply timer, the one
        thing that finds a dead link, and a connection only /healthz uses never healed."""
        if not self.connected:
            if self._ever_connected or not self.running:
                return fail(RedisUnavailable(f"redis {self.name}: {self.last_error}"))
            return self._after_first_connection(args, kwargs)
        d = self.handler.execute_command(*args, **kwargs)
        d.addErrback(self._lost)
        return shielded(d)

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


def command_connection(owner, redis, name: str, initial_delay: float, max_delay: float) -> RedisConnection:
    """The connection a part sends one kind of its commands on: `redis` itself when it is a
    connection (the process's one for that role, started and stopped by whoever made it),
    else a new one to the address `redis` (or that of the connection given for another
    role), started and stopped with `owner` (a part used on its own: the CLI, tests)."""
    if isinstance(redis, RedisConnection):
        return redis
    connection = RedisConnection(redis, name, initial_delay, max_delay)
    connection.setServiceParent(owner)
    return connection


def address_of(redis) -> "RedisAddress":
    """The address `redis` is (a RedisAddress) or is connected to (a RedisConnection)."""
    return redis.address if isinstance(redis, RedisConnection) else redis


def reading_connection(owner, redis, name: str, initial_delay: float, max_delay: float,
                       block_ms: int) -> RedisConnection:
    """A connection of `owner`'s own for blocking reads (`XREAD BLOCK block_ms` holds it
    while it waits), to the address of `redis`. A read not answered within its block time
    and READ_MARGIN is a dead link (a connection cut without FIN or RST): it is dropped and
    made again, so the reader never waits forever on a connection that looks up."""
    connection = RedisConnection(address_of(redis), name, initial_delay, max_delay,
                                 reply_timeout=block_ms / 1000 + READ_MARGIN)
    connection.setServiceParent(owner)
    return connection


READ_MARGIN = 10.0  # seconds a blocking read may take beyond its block time before it counts as lost


class WritePause:
    """What a writer does while Redis refuses its writes (out of memory, a replica, loading:
    see RETRYABLE_REPLIES): keep the error for /healthz, say so once, and try again after a
    backoff instead of on the next write; say once when writes are taken again."""

    def __init__(self, what: str, resume, initial_delay: float, max_delay: float, reactor=None):
        self.what = what  # "bus writes", "writes to the event log"
        self._resume = resume
        self._backoff = (initial_delay, max_delay)
        self._reactor = reactor
        self._call = None
        self._failures = 0
        self.error: str | None = None

    @property
    def paused(self) -> bool:
        return self._call is not None

    def refused(self, error: BaseException) -> None:
        """A write was refused with `error` (a retryable reply): pause, resume after backoff.
        The refusals of one round (every pipelined write answered while paused) count as
        one failure: the backoff grows per round, not per write."""
        first, self.error = self.error is None, str(error).split("\r")[0][:200]
        if first:
            log.warn("redis refuses {what} ({error}); they wait and are retried", what=self.what, error=self.error)
        if self._call is None:
            self._failures += 1
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            self._call = reactor.callLater(retry_delay(self._failures, *self._backoff), self._resumed)

    def accepted(self) -> None:
        """A write was taken (one of the writer's, or a health check's): no longer refused,
        and a paused writer goes on at once rather than after its backoff."""
        if self.error is not None:
            log.info("redis takes {what} again", what=self.what)
        self.error = None
        self._failures = 0
        if self._call is not None:
            self.cancel()
            self._resume()

    def _resumed(self) -> None:
        self._call = None
        self._resume()

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def check_durability(connection: RedisConnection):
    """Log one warning for each Redis setting that can lose accepted data (where Redis lets
    us read its settings: managed services often refuse CONFIG). Fires with the warnings."""
    from twisted.internet.defer import ensureDeferred

    async def check():
        settings: dict = {}
        try:
            for name in ("maxmemory-policy", "appendonly", "appendfsync"):
                reply = await connection.command("CONFIG", "GET", name)
                settings.update(zip(reply[::2], reply[1::2]))
        except Exception as e:
            log.info("could not read Redis's settings ({error}); check them by hand: {advice}",
                     error=type(e).__name__, advice=DURABILITY_ADVICE)
            return []
        warnings = durability_warnings(settings)
        for warning in warnings:
            log.warn("redis: {warning} ({advice})", warning=warning, advice=DURABILITY_ADVICE)
        return warnings

    return ensureDeferred(check())
