"""The running gateway as one Twisted service: builds stores, bus, hub, API and site from
a `Config`, listens on the port, and shuts down by closing every client with 1001."""

from __future__ import annotations

import txaio
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger

from eformws import emitter
from eformws.api import Api
from eformws.bus.local import LocalBus
from eformws.emitter import WebSocketEvents
from eformws.hub import Hub
from eformws.sessions.sqlite import SQLiteSessionStore
from eformws.site import build_site
from eformws.sqlite import SQLiteDatabase
from eformws.store.memory import MemoryEventStore
from eformws.store.sqlite import SQLiteEventStore
from eformws.wamp import WampRouter
from eformws.websocket import (
    CLOSE_GOING_AWAY,
    NamespaceRoot,
    WebSocketSettings,
    protocol_options,
)


class EformService(MultiService):
    log = Logger()

    def __init__(self, config, reactor=None):
        super().__init__()
        self.config = config
        # Autobahn logs handshakes (with query strings) at debug level: never below info.
        txaio.set_global_log_level("info" if config.get("log", "level") == "debug" else config.get("log", "level"))
        self.reactor = reactor or _default_reactor()
        self._databases: dict[str, SQLiteDatabase] = {}
        self.database = self._database(config.get("sessions", "path"))
        self.sessions = SQLiteSessionStore(self.database)
        self.event_store = self._event_store()
        TimerService(config.get("events", "sweep_interval"), self._sweep).setServiceParent(self)
        self.hub = Hub()
        for ns in config.namespaces:
            self.hub.create_namespace(ns.path, ns.require_auth, ns.default_room, ns.roles)
        self.bus = LocalBus()
        self.hub.bus = self.bus
        self.events = WebSocketEvents(self.hub, self.event_store, self.bus)
        self.api = Api(self.hub, self.sessions, config, self.events, self.event_store)
        settings = WebSocketSettings.from_config(config, self.hub, self.sessions, self.event_store)
        self.wamp = WampRouter.from_config(config, self.hub, self.sessions, self.events, self.api.status)
        self.hub.add_endpoint(self.wamp)
        self.site = build_site(
            self.api.resource(),
            NamespaceRoot(self.hub, settings, protocol_options(config)),
            config.get("server", "max_body_bytes"),
            wamp_resource=self.wamp.resource(),
        )
        self.listening_port = None

    def _database(self, path: str) -> SQLiteDatabase:
        """One SQLiteDatabase (one thread, one connection) per file, shared by its stores."""
        database = self._databases.get(path)
        if database is None:
            database = self._databases[path] = SQLiteDatabase(path, self.reactor)
            database.setServiceParent(self)
        return database

    def _event_store(self):
        max_events = self.config.get("events", "max_events")
        if self.config.get("events", "store") == "memory":
            return MemoryEventStore(max_events)
        return SQLiteEventStore(self._database(self.config.get("events", "path")), max_events)

    def _sweep(self):
        d = self.event_store.expire()
        d.addErrback(lambda failure: self.log.failure("event store sweep failed", failure))
        return d

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return self.listening_port.getHost().port

    def startService(self):
        super().startService()
        self.bus.start(self.hub.deliver)
        emitter.install(self.events)
        self.listening_port = self.reactor.listenTCP(
            self.config.get("server", "port"),
            self.site,
            backlog=self.config.get("server", "backlog"),
            interface=self.config.get("server", "host"),
        )
        self.log.info(
            "eformws listening on {host}:{port} (namespaces: {namespaces})",
            host=self.config.get("server", "host"),
            port=self.port,
            namespaces=", ".join(self.hub.namespaces),
        )

    @inlineCallbacks
    def stopService(self):
        """Stop accepting, close every client with 1001, wait (bounded), then stop parts."""
        if self.listening_port is not None:
            yield self.listening_port.stopListening()
        yield self.close_clients(CLOSE_GOING_AWAY, "Server shutdown")
        self.bus.stop()
        emitter.install(None)
        yield super().stopService()
        # twistd re-raises the SIGTERM/SIGINT that stopped the reactor once it has stopped,
        # so the process would end "killed by signal"; this shutdown was orderly: exit 0.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
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
