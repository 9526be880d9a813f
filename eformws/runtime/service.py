"""The running gateway as one Twisted service: builds stores, bus, hub, API and site from
a `Config`, listens on the port, and shuts down by closing every client with 1001."""

from __future__ import annotations

import txaio
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from eformws import emitter
from eformws.backends.nodes import NodeRegistry, node_id
from eformws.backends.redis import RedisAddress, RedisConnection, RedisUnavailable
from eformws.backends.sqlite import SQLiteDatabase
from eformws.bus.local import LocalBus
from eformws.bus.redis import RedisBus
from eformws.core import metrics
from eformws.core.compat import forget_exit_signal
from eformws.core.deferreds import shielded
from eformws.core.policy import Policy
from eformws.core.wire import CLOSE_GOING_AWAY
from eformws.delivery.feed import EventFeed
from eformws.delivery.hub import Hub
from eformws.delivery.publisher import WebSocketEvents
from eformws.delivery.redaction import Redactor
from eformws.events.store.memory import MemoryEventStore
from eformws.events.store.redis import RedisEventStore
from eformws.events.store.sqlite import SQLiteEventStore
from eformws.http.api import Api
from eformws.http.console import mounted as console_resources
from eformws.http.site import build_site
from eformws.runtime.listener import ListeningService, server_endpoint
from eformws.runtime.tls import tls_options
from eformws.sessions.cache import CachedSessions
from eformws.sessions.redis import RedisSessionStore
from eformws.sessions.sqlite import SQLiteSessionStore
from eformws.sessions.watch import SessionWatch
from eformws.transports.gateway import Admission, protocol_options
from eformws.transports.legacy import NamespaceRoot, WebSocketSettings
from eformws.transports.wamp import WampRouter
from eformws.transports.wamp.broker import MAX_RETAINED, MAX_RETAINED_BYTES
from eformws.transports.wamp.registry import RedisRegistry
from eformws.transports.wamp.retained import RedisRetained

# The Redis connections of a process, one per kind of work: Redis answers each connection's
# commands in order, so work that may wait (a write while Redis refuses writes or pauses
# them for a failover, a scan of the log for a catch-up) never delays another kind (a
# handshake's session lookup). The bus and the event log each add a blocking reader.
LOOKUPS = "lookups"  # small requests a client waits for: session lookups (every handshake), the node list, WAMP registrations
WRITES = "writes"  # event appends, the bus's writes, node heartbeats; session creates and revokes go with lookups
LOG_QUERIES = "event log queries"  # catch-up and recent scans, the sweep, statistics

LISTEN_WAIT = 5.0  # seconds the start waits for the event log's position before listening anyway


class EformService(MultiService):
    log = Logger()

    def __init__(self, config, reactor=None, inherited_fd: int | None = None, rawsocket_fd: int | None = None):
        super().__init__()
        self.config = config
        self.inherited_fd = inherited_fd
        self.rawsocket_fd = rawsocket_fd  # the RawSocket port, bound by `twistd eformws` (else bound when listening)
        # Autobahn logs handshakes (with query strings) at debug level: never below info.
        txaio.set_global_log_level("info" if config.get("log", "level") == "debug" else config.get("log", "level"))
        self.reactor = reactor or _default_reactor()
        self.node_id = node_id()
        self.redis = RedisAddress.parse(config.get("redis", "url")) if config.get("redis", "url") else None
        self._redis_roles: dict[str, RedisConnection] = {}  # this process's Redis connections, by role
        self._databases: dict[str, SQLiteDatabase] = {}
        self.database = None  # the sessions' SQLite database, when sessions are in SQLite
        self.sessions = self._session_store()
        self.event_store = self._event_store()
        TimerService(config.get("events", "sweep_interval"), self._sweep).setServiceParent(self)
        self.hub = Hub(redactor=Redactor(config.get("events", "sensitive_fields")))
        for ns in config.namespaces:
            self.hub.create_namespace(ns.path, ns.require_auth, ns.default_room, ns.roles, ns.echo)
        self.bus = self._bus()
        self.nodes = self._node_registry()
        self.events = WebSocketEvents(self.hub, self.event_store, self.bus, config.get("events", "idempotency_window"),
                                      config.get("events", "max_data_bytes"))
        self.feed = EventFeed(self.hub, self.event_store)
        self.ready = None  # fires once listening
        watch = SessionWatch(self.hub, self.sessions, config.get("sessions", "recheck_interval"))
        policy = Policy.from_config(config)  # who may do what: one for every transport and the API
        # Handshakes and the API see the store through a few seconds' memory of lookups; the
        # recheck asks the store itself (a revoke made elsewhere closes within its interval).
        handshakes = CachedSessions(self.sessions, config.get("sessions", "lookup_cache"))
        self.api = Api(self.hub, handshakes, config, policy, self.events, self.event_store, self.bus, self.nodes,
                       recheck_sessions=watch.check)  # a revoke closes this process's connections at once
        settings = WebSocketSettings.from_config(config, policy, self.hub, handshakes, self.event_store)
        admission = Admission(config.get("server", "max_connections"))  # legacy namespaces and /wamp together
        self.registry = self._wamp_registry()
        self.retained = self._retained_store()
        self.wamp = WampRouter.from_config(config, policy, self.hub, handshakes, self.events, self.api.status, admission,
                                           bus=self.bus, registry=self.registry, node=self.node_id,
                                           peers=self.nodes.others if self.nodes is not None else None,
                                           retained_store=self.retained)
        if self.registry is not None:
            registrations = self.wamp.registrations
            self.registry.on_connected = registrations.resync
            self.registry.on_purged = registrations.purged
            self.registry.on_tick = registrations.retry_owed  # releases Redis refused (out of memory, ...)
            self.nodes.on_rejoined.append(registrations.resync)  # taken for dead while alive: claim again
        self.hub.add_endpoint(self.wamp)
        watch.setServiceParent(self)
        self.metrics = metrics.ServiceCollector(self.hub, self._redis_connections())
        mounted = {b"metrics": metrics.MetricsResource()} if config.get("metrics", "enabled") else {}
        mounted.update(console_resources())  # /console, and / redirected there
        self.site = build_site(
            self.api.resource(),
            NamespaceRoot(self.hub, settings, protocol_options(config), admission),
            config.get("server", "max_body_bytes"),
            wamp_resource=self.wamp.resource(),
            mounted=mounted,
            max_http_connections=config.get("server", "max_http_connections"),
            head_timeout=config.get("server", "request_head_timeout"),
            min_body_rate=config.get("server", "min_body_rate"),
            access=config.get("log", "access"),
            reactor=self.reactor,
        )
        self.listener = None  # a ListeningService once the event log's position is known
        self.rawsocket_listener = None  # likewise, for `wamp.rawsocket_port` when it is set
        certificate = config.get("server", "tls_certificate")
        self.tls = tls_options(certificate, config.get("server", "tls_private_key")) if certificate else None

    def _redis_connections(self) -> list[RedisConnection]:
        """Every Redis connection among this service's parts (for the metrics)."""
        found, pending = list(self._redis_roles.values()), list(self)
        while pending:
            service = pending.pop()
            if isinstance(service, RedisConnection):
                found.append(service)
            elif isinstance(service, MultiService):
                pending.extend(service)
        return found

    def _database(self, path: str) -> SQLiteDatabase:
        """One SQLiteDatabase (one thread, one connection) per file, shared by its stores."""
        database = self._databases.get(path)
        if database is None:
            database = self._databases[path] = SQLiteDatabase(path, self.reactor)
            database.setServiceParent(self)
        return database

    def _redis_options(self) -> dict:
        config = self.config
        return {
            "initial_delay": config.get("redis", "reconnect_initial_delay"),
            "max_delay": config.get("redis", "reconnect_max_delay"),
        }

    def _redis_role(self, role: str) -> RedisConnection:
        """The process's Redis connection for one kind of work (ROLES), shared by the parts
        that do it; made when the first needs it, started before them and stopped once they
        have stopped (the node registry leaves the registry on it as it stops)."""
        connection = self._redis_roles.get(role)
        if connection is None:
            connection = self._redis_roles[role] = RedisConnection(self.redis, role, **self._redis_options())
        return connection

    def _child(self, service):
        service.setServiceParent(self)
        return service

    def _session_store(self):
        if self.config.get("sessions", "backend") == "redis":
            prefix = self.config.get("redis", "prefix")
            return self._child(RedisSessionStore(self._redis_role(LOOKUPS), prefix, **self._redis_options()))
        self.database = self._database(self.config.get("sessions", "path"))
        return SQLiteSessionStore(self.database)

    def _event_store(self):
        config = self.config
        max_events = config.get("events", "max_events")
        kind = config.get("events", "store")
        if kind == "memory":
            return MemoryEventStore(max_events)
        if kind == "redis":
            return self._child(
                RedisEventStore(self._redis_role(WRITES), config.get("redis", "prefix"), max_events,
                                config.get("redis", "outage_buffer"), config.get("redis", "emit_timeout"),
                                queries=self._redis_role(LOG_QUERIES), **self._redis_options())
            )
        return SQLiteEventStore(self._database(config.get("events", "path")), max_events)

    def _bus(self):
        config = self.config
        if self.redis is None:
            return LocalBus()
        return self._child(
            RedisBus(self._redis_role(WRITES), config.get("redis", "prefix"), self.node_id, config.get("redis", "outage_buffer"),
                     config.get("redis", "bus_stream_length"), **self._redis_options())
        )

    def _node_registry(self):
        config = self.config
        if self.redis is None:
            return None
        return self._child(
            NodeRegistry(self._redis_role(WRITES), config.get("redis", "prefix"), self.node_id, self.hub,
                         config.get("redis", "node_heartbeat"), config.get("redis", "node_ttl"),
                         lookups=self._redis_role(LOOKUPS), **self._redis_options())
        )

    def _wamp_registry(self):
        """Who serves each WAMP procedure: in Redis for a deployment of several processes."""
        if self.redis is None:
            return None
        config = self.config
        return self._child(RedisRegistry(self._redis_role(LOOKUPS), config.get("redis", "prefix"),
                                         config.get("redis", "node_heartbeat"), config.get("redis", "node_ttl"),
                                         **self._redis_options()))

    def _retained_store(self):
        """Retained WAMP events for processes that start later: in Redis, when there is one."""
        if self.redis is None:
            return None
        return self._child(RedisRetained(self._redis_role(WRITES), self.config.get("redis", "prefix"), MAX_RETAINED,
                                         MAX_RETAINED_BYTES, **self._redis_options()))

    def _sweep(self):
        d = self.event_store.expire()

        def failed(failure):
            if failure.check(RedisUnavailable):
                return None  # the outage is reported by /healthz; the next sweep catches up
            self.log.failure("event store sweep failed", failure)

        d.addErrback(failed)
        return d

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return self.listener.port.getHost().port

    @property
    def rawsocket_port(self) -> int | None:
        """The RawSocket port actually listened on; None without `wamp.rawsocket_port`."""
        return None if self.rawsocket_listener is None else self.rawsocket_listener.port.getHost().port

    def startService(self):
        """Start the parts, follow the event log, and listen once its position is known and
        the retained events of earlier processes are read (at most `LISTEN_WAIT` seconds
        later: without the position, handshakes are refused with 503)."""
        for connection in self._redis_roles.values():
            connection.startService()
        super().startService()
        metrics.REGISTRY.register(self.metrics)
        self.bus.start(self.hub.deliver, self.wamp.signal)
        emitter.install(self.events)
        started = [self.feed.start()]
        if self.retained is not None:  # a subscriber's first get_retained finds what earlier processes kept
            started.append(self.retained.loaded)
        following = shielded(DeferredList(started))
        following.addTimeout(LISTEN_WAIT, self.reactor)
        following.addErrback(lambda _: None)
        self.ready = following.addCallback(lambda _: self._listen() if self.running else None)

    def _listen(self):
        """Listen, as child services, on the endpoints the configuration names: the port, and
        the RawSocket port when `wamp.rawsocket_port` is set (TLS on both when configured)."""
        self.listener = self._listener(self.site, self.config.get("server", "port"), self.inherited_fd)
        listening = [self.listener.listening]
        rawsocket_port = self.config.get("wamp", "rawsocket_port")
        if rawsocket_port is not None:
            factory = self.wamp.rawsocket_factory(self.reactor)
            self.rawsocket_listener = self._listener(factory, rawsocket_port, self.rawsocket_fd)
            listening.append(self.rawsocket_listener.listening)
        return gatherResults(listening, consumeErrors=True).addCallback(self._listening)

    def _listener(self, factory, port: int, inherited_fd: int | None) -> ListeningService:
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        endpoint = server_endpoint(self.reactor, self.config.get("server", "host"), port,
                                   self.config.get("server", "backlog"), inherited_fd)
        listener = ListeningService(endpoint, factory)
        listener.setServiceParent(self)
        return listener

    def _listening(self, ports):
        self.log.info(
            "eformws listening on {host}:{port}{tls} (namespaces: {namespaces})",
            host=self.config.get("server", "host"),
            tls=" with TLS" if self.tls is not None else "",
            port=self.port,
            namespaces=", ".join(self.hub.namespaces),
        )
        if self.rawsocket_listener is not None:
            self.log.info("eformws serving WAMP over RawSocket on {host}:{rawsocket_port}{tls}",
                          host=self.config.get("server", "host"), rawsocket_port=self.rawsocket_port,
                          tls=" with TLS" if self.tls is not None else "")
        return self

    @inlineCallbacks
    def stopService(self):
        """Stop accepting, close every client with 1001, wait (bounded), then stop parts."""
        for listener in (self.listener, self.rawsocket_listener):  # stop accepting first; the rest after the clients
            if listener is not None:
                yield listener.stopService()
        yield self.close_clients(CLOSE_GOING_AWAY, "Server shutdown")
        self.bus.stop()
        emitter.install(None)
        metrics.REGISTRY.unregister(self.metrics)
        yield super().stopService()
        yield DeferredList([maybeDeferred(connection.stopService) for connection in self._redis_roles.values()])
        forget_exit_signal(self.reactor)  # an orderly shutdown: exit 0
        self.log.info("eformws stopped")

    def close_clients(self, code: int, reason: str):
        """Fires when every client has closed, or after `shutdown_timeout` (then drops)."""
        connections = list(self.hub.connections())
        if not connections:
            return DeferredList([])
        closed = DeferredList([c.closed for c in connections], consumeErrors=True)
        self.hub.close_all(code, reason)
        timeout = self.config.get("server", "shutdown_timeout")

        def drop_remaining():
            for connection in connections:
                connection.abort()

        call = self.reactor.callLater(timeout, drop_remaining)
        closed.addBoth(lambda result: call.cancel() if call.active() else None)
        return closed


def _default_reactor():
    from twisted.internet import reactor

    return reactor
