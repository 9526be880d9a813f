"""The seams are real: every implementation of IBus, IEventStore, ISessionStore,
ISessionAdmin, IFraming, IConnection and IEndpoint provides what its interface says
callers use. Each test builds a real instance (a SQLite file under tmp_path, the suite's
Redis, connections of a started server) and checks it with `verifyObject`, which also
sees what `__init__` sets and properties answer; the last test finds every implementation
declared in eformws and fails for one these tests do not build."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import pytest_twisted
from logcheck import logged_problems  # noqa: F401  (autouse: no error in the log)
from rawsocket_peer import join_rawsocket
from twisted.internet import defer
from wamp_peer import Peer
from zope.interface.verify import verifyObject

import eformws
from eformws.backends.redis import RedisAddress
from eformws.backends.sqlite import SQLiteDatabase
from eformws.bus import IBus
from eformws.bus.local import LocalBus
from eformws.bus.redis import RedisBus
from eformws.delivery.hub import IConnection, IEndpoint, IFraming
from eformws.events.store import IEventStore
from eformws.events.store.memory import MemoryEventStore
from eformws.events.store.redis import RedisEventStore
from eformws.events.store.sqlite import SQLiteEventStore
from eformws.sessions import ISessionAdmin, ISessionStore
from eformws.sessions.cache import CachedSessions
from eformws.sessions.redis import RedisSessionStore
from eformws.sessions.sqlite import SQLiteSessionStore
from eformws.transports.deflate import DeflateFraming
from eformws.transports.legacy import JsonFraming, LegacyProtocol
from eformws.transports.wamp.framing import EventFraming
from eformws.transports.wamp.router import WampRouter
from eformws.transports.wamp.rawsocket import RawSocketProtocol
from eformws.transports.wamp.transport import WampProtocol

TIMEOUT = 5.0
LOCKERS = "/ws/lockers"
HELLO, WELCOME, CHALLENGE, AUTHENTICATE = 1, 2, 4, 5


def within(d: defer.Deferred, seconds: float = TIMEOUT) -> defer.Deferred:
    """`d`, failed with a TimeoutError if it has not fired in time (no test hangs)."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


class Parts:
    """Builds the parts under test: Redis ones on the suite's Redis under this test's key
    prefix, SQLite ones on one file under tmp_path; stops what it started."""

    def __init__(self, request, tmp_path):
        self._request = request
        self._tmp_path = tmp_path
        self.started: list = []

    @property
    def redis(self) -> RedisAddress:
        return RedisAddress.parse(self._request.getfixturevalue("redis_url"))

    @property
    def prefix(self) -> str:
        return self._request.getfixturevalue("redis_prefix")

    def start(self, service):
        service.startService()
        self.started.append(service)
        return service

    def database(self) -> SQLiteDatabase:
        return self.start(SQLiteDatabase(str(self._tmp_path / "eformws.db")))

    def stop(self) -> defer.Deferred:
        return defer.gatherResults(
            [defer.maybeDeferred(service.stopService) for service in reversed(self.started) if service.running]
        )


@pytest.fixture
def parts(request, tmp_path):
    built = Parts(request, tmp_path)
    yield built
    pytest_twisted.blockon(built.stop())


REDIS_OPTIONS = {"initial_delay": 0.05, "max_delay": 0.2}


# -- what each test builds, by the class it is of --------------------------------------------


async def local_bus(parts):
    return LocalBus()


async def redis_bus(parts):
    bus = parts.start(RedisBus(parts.redis, parts.prefix, "test-interfaces", 1000, 10_000, block_ms=200,
                               **REDIS_OPTIONS))
    await within(bus.writer.when_connected())
    await within(bus.reader.when_connected())
    return bus


BUSES = {"local": (LocalBus, local_bus), "redis": (RedisBus, redis_bus)}


async def memory_event_store(parts):
    return MemoryEventStore()


async def sqlite_event_store(parts):
    return SQLiteEventStore(parts.database())


async def redis_event_store(parts):
    return parts.start(RedisEventStore(parts.redis, parts.prefix, 100_000, 10_000, block_ms=200, **REDIS_OPTIONS))


EVENT_STORES = {
    "memory": (MemoryEventStore, memory_event_store),
    "sqlite": (SQLiteEventStore, sqlite_event_store),
    "redis": (RedisEventStore, redis_event_store),
}


async def sqlite_session_store(parts):
    return SQLiteSessionStore(parts.database())


async def redis_session_store(parts):
    return parts.start(RedisSessionStore(parts.redis, parts.prefix, **REDIS_OPTIONS))


async def cached_session_store(parts):
    return CachedSessions(SQLiteSessionStore(parts.database()), 5.0)


SESSION_STORES = {
    "sqlite": (SQLiteSessionStore, sqlite_session_store),
    "redis": (RedisSessionStore, redis_session_store),
    "cached": (CachedSessions, cached_session_store),
}


async def legacy_connection(server, opened, compression=None):
    """The server's side of a legacy client joined to /ws/lockers with an admin session (not
    offering compression unless asked)."""
    session_id = await server.session(role="admin")
    opened.append(await server.join(LOCKERS, session_id, compression=compression))
    [connection] = server.hub.namespaces[LOCKERS].connections.values()
    return connection


async def wamp_connection(server, opened):
    """The server's side of a raw WAMP client (wamp.2.json) past WELCOME (ticket auth)."""
    session_id = await server.session(role="admin")
    client = await server.connect("/wamp", subprotocols=["wamp.2.json"])
    opened.append(client)
    await client.send([HELLO, "eform", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}])
    assert (await client.recv())[0] == CHALLENGE
    await client.send([AUTHENTICATE, session_id, {}])
    welcome = await client.recv()
    assert welcome[0] == WELCOME, welcome
    [connection] = server.hub.endpoints["/wamp"].connections.values()
    return connection


async def rawsocket_connection(server, opened):
    """The server's side of a stock Autobahn|Python session on the RawSocket port."""
    peer = await join_rawsocket(server, role="admin")
    opened.append(peer)
    [connection] = server.hub.endpoints["/wamp"].connections.values()
    return connection


CONNECTIONS = {"legacy": (LegacyProtocol, legacy_connection), "wamp": (WampProtocol, wamp_connection),
               "rawsocket": (RawSocketProtocol, rawsocket_connection)}
async def deflate_connection(server, opened):
    """The server's side of a legacy client that negotiated permessage-deflate (`websockets`
    offers it; the server has `websocket.compression` on)."""
    return await legacy_connection(server, opened, compression="deflate")


FRAMINGS = {"legacy": (JsonFraming, legacy_connection), "wamp": (EventFraming, wamp_connection),
            "rawsocket": (EventFraming, rawsocket_connection), "deflate": (DeflateFraming, deflate_connection)}
ENDPOINTS = {"/wamp": WampRouter}


@pytest.fixture
def opened(start_server):
    """Clients a test opened, closed before its server stops (a raw WAMP client would not
    answer the router's GOODBYE at shutdown)."""
    clients: list = []
    yield clients
    for client in clients:
        if isinstance(client, Peer):
            client.leave()
            pytest_twisted.blockon(within(client.gone))
        else:
            pytest_twisted.blockon(client.close())


@pytest_twisted.async_fixture
async def server(start_server):
    """A server with a RawSocket port and compression too."""
    return await start_server({"wamp.rawsocket_port": 0, "websocket.compression": True})


# -- buses and stores ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BUSES)
@pytest_twisted.ensureDeferred
async def test_bus_provides_what_publishers_and_healthz_use(parts, kind):
    cls, build = BUSES[kind]
    bus = await build(parts)
    assert isinstance(bus, cls)
    assert verifyObject(IBus, bus)


@pytest.mark.parametrize("kind", EVENT_STORES)
@pytest_twisted.ensureDeferred
async def test_event_store_provides_what_the_log_paths_and_healthz_use(parts, kind):
    cls, build = EVENT_STORES[kind]
    store = await build(parts)
    await within(store.ping())  # it answers: a real, reachable store
    assert isinstance(store, cls)
    assert verifyObject(IEventStore, store)


@pytest.mark.parametrize("interface", [ISessionStore, ISessionAdmin], ids=["lookup", "admin"])
@pytest.mark.parametrize("kind", SESSION_STORES)
@pytest_twisted.ensureDeferred
async def test_session_store_provides_lookups_and_administration(parts, kind, interface):
    cls, build = SESSION_STORES[kind]
    store = await build(parts)
    await within(store.ping())
    assert isinstance(store, cls)
    assert verifyObject(interface, store)


# -- what the hub holds: connections, their framings, endpoints ------------------------------


@pytest.mark.parametrize("kind", CONNECTIONS)
@pytest_twisted.ensureDeferred
async def test_connection_provides_what_the_hub_shutdown_and_session_recheck_use(server, opened, kind):
    cls, connect = CONNECTIONS[kind]
    connection = await connect(server, opened)
    assert isinstance(connection, cls)
    assert verifyObject(IConnection, connection)


@pytest.mark.parametrize("kind", FRAMINGS)
@pytest_twisted.ensureDeferred
async def test_framing_of_a_connection_provides_what_the_hub_frames_messages_with(server, opened, kind):
    cls, connect = FRAMINGS[kind]
    connection = await connect(server, opened)
    assert isinstance(connection.framing, cls)
    assert verifyObject(IFraming, connection.framing)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_endpoint_provides_what_the_hub_counts_closes_and_delivers_with(server, path):
    endpoint = server.hub.endpoints[path]
    assert isinstance(endpoint, ENDPOINTS[path])
    assert verifyObject(IEndpoint, endpoint)


# -- no implementation goes unchecked --------------------------------------------------------


CHECKED = {
    IBus: {cls for cls, _ in BUSES.values()},
    IEventStore: {cls for cls, _ in EVENT_STORES.values()},
    ISessionStore: {cls for cls, _ in SESSION_STORES.values()},
    ISessionAdmin: {cls for cls, _ in SESSION_STORES.values()},
    IConnection: {cls for cls, _ in CONNECTIONS.values()},
    IFraming: {cls for cls, _ in FRAMINGS.values()},
    IEndpoint: set(ENDPOINTS.values()),
}


def declared_implementations() -> dict:
    """interface -> the classes of eformws that implement it (by `@implementer` or by
    inheriting from one that does), from every module that declares an implementation."""
    package = Path(eformws.__file__).parent
    found: dict = {interface: set() for interface in CHECKED}
    for path in sorted(package.rglob("*.py")):
        if "implementer(" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(".".join(("eformws", *path.relative_to(package).with_suffix("").parts)))
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for interface in CHECKED:
                if interface.implementedBy(cls):
                    found[interface].add(cls)
    return found


def named(implementations: dict) -> dict:
    return {interface.__name__: sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in classes)
            for interface, classes in implementations.items()}


def test_every_implementation_in_eformws_is_checked_here():
    assert named(declared_implementations()) == named(CHECKED)
