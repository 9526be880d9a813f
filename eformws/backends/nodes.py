"""The processes of one deployment: each writes a short-lived entry in Redis (id, its
connections, last seen) on a heartbeat; status adds them up across the deployment."""

from __future__ import annotations

import json
import os
import uuid

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from eformws.backends.redis import command_connection
from eformws.core import wire

log = Logger(namespace="eformws.nodes")


class NodeRegistry(MultiService):
    def __init__(self, redis, prefix: str, node_id: str, hub, interval: float, ttl: float,
                 initial_delay: float = 0.5, max_delay: float = 10.0, lookups=None, leave_timeout: float = 2.0):
        super().__init__()
        self.prefix = prefix
        self.node_id = node_id
        self.hub = hub
        self.ttl = ttl
        self.leave_timeout = leave_timeout
        self.connection = command_connection(self, redis, "node registry", initial_delay, max_delay)
        self.connection.on_connected.append(lambda _: self.heartbeat())
        # The node list is read where reads do not wait behind writes (status during a failover).
        self.lookups = lookups if lookups is not None else self.connection
        self.on_rejoined: list = []
        self._beats = 0  # heartbeats written: the first finds no entry, as it should
        self._beat = TimerService(interval, self.heartbeat)
        self._beat.setServiceParent(self)

    def local(self) -> dict:
        counts = self.hub.counts()
        return {
            "id": self.node_id,
            "connections": counts.total,
            "namespaces": counts.namespaces,
            "endpoints": counts.endpoints,
            "last_seen": wire.js_timestamp(),
        }

    def heartbeat(self):
        """Write this process's entry; one that had expired since the last (a stall, an
        outage past `ttl`: the others may have taken this process for dead) is told to
        `on_rejoined` callbacks."""
        if not self.connection.connected:
            return None
        key = f"{self.prefix}node:{self.node_id}"
        d = self.connection.command("SET", key, json.dumps(self.local()), "PX", int(self.ttl * 1000), "GET")
        d.addCallback(self._beaten)
        d.addCallback(lambda _: self.connection.command("SADD", f"{self.prefix}nodes", self.node_id))
        d.addErrback(lambda failure: log.warn("node heartbeat failed: {error}", error=failure.getErrorMessage()))
        return d

    def _beaten(self, before) -> None:
        if before is None and self._beats:
            log.warn("this process's status entry had expired (no heartbeat for {ttl:g} s): the others may have "
                     "taken it for dead", ttl=self.ttl)
            for callback in list(self.on_rejoined):
                callback()
        self._beats += 1

    @inlineCallbacks
    def nodes(self) -> list[dict]:
        """Every live process's entry (this one's fresh). Ids whose entry expired are left
        in the list for the WAMP registry's purge, which takes their callees out first."""
        ids = yield self.lookups.command("SMEMBERS", f"{self.prefix}nodes")
        ids = sorted(set(ids or ()) - {self.node_id})
        found = [self.local()]
        if ids:
            values = yield self.lookups.command("MGET", *[f"{self.prefix}node:{i}" for i in ids])
            for node_id, value in zip(ids, values):
                if value is None:
                    continue
                try:
                    found.append(json.loads(value))
                except ValueError:
                    continue
        return found

    def others(self):
        """The ids of the other live processes (a Deferred)."""
        return self.nodes().addCallback(lambda found: [n["id"] for n in found if n.get("id") != self.node_id])

    @inlineCallbacks
    def stopService(self):
        """Leave the registry at once, so status stops counting this process: the heartbeat
        stops first (one queued behind the DEL would write the entry again), and the leaving
        waits at most `leave_timeout` (a dead link must not hold the stop)."""
        yield self._beat.stopService()
        if self.connection.connected:
            from twisted.internet import reactor

            try:
                leaving = self.connection.command("DEL", f"{self.prefix}node:{self.node_id}")
                leaving.addCallback(lambda _: self.connection.command("SREM", f"{self.prefix}nodes", self.node_id))
                yield leaving.addTimeout(self.leave_timeout, reactor)
            except Exception:
                pass
        yield super().stopService()


def node_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

