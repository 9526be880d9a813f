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
                 initial_delay: float = 0.5, max_delay: float = 10.0):
        super().__init__()
        self.prefix = prefix
        self.node_id = node_id
        self.hub = hub
        self.ttl = ttl
        self.connection = command_connection(self, redis, "node registry", initial_delay, max_delay)
        self.connection.on_connected.append(lambda _: self.heartbeat())
        TimerService(interval, self.heartbeat).setServiceParent(self)

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
        if not self.connection.connected:
            return None
        key = f"{self.prefix}node:{self.node_id}"
        d = self.connection.command("SET", key, json.dumps(self.local()), "PX", int(self.ttl * 1000))
        d.addCallback(lambda _: self.connection.command("SADD", f"{self.prefix}nodes", self.node_id))
        d.addErrback(lambda failure: log.warn("node heartbeat failed: {error}", error=failure.getErrorMessage()))
        return d

    @inlineCallbacks
    def nodes(self) -> list[dict]:
        """Every live process's entry (this one's fresh); stale ids are forgotten."""
        ids = yield self.connection.command("SMEMBERS", f"{self.prefix}nodes")
        ids = sorted(set(ids or ()) - {self.node_id})
        found = [self.local()]
        if ids:
            values = yield self.connection.command("MGET", *[f"{self.prefix}node:{i}" for i in ids])
            for node_id, value in zip(ids, values):
                if value is None:
                    yield self.connection.command("SREM", f"{self.prefix}nodes", node_id)
                    continue
                try:
                    found.append(json.loads(value))
                except ValueError:
                    continue
        return found

    @inlineCallbacks
    def stopService(self):
        """Leave the registry at once, so status stops counting this process."""
        if self.connection.connected:
            try:
                yield self.connection.command("DEL", f"{self.prefix}node:{self.node_id}")
                yield self.connection.command("SREM", f"{self.prefix}nodes", self.node_id)
            except Exception:
                pass
        yield super().stopService()


def node_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

