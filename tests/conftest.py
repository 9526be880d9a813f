"""Test harness: a real eformws service listening on port 0 with a real SQLite file, and a
WebSocket client from another library (`websockets`) on the same asyncio event loop; and
the helpers test modules share (`from conftest import refused, until_pong, ...`: a test
module never imports another test module; WAMP clients are in wamp_peer.py and
wamp_frames.py, processes in processes.py)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime, timezone

import pytest
import pytest_twisted
import websockets
from twisted.internet import defer
from websockets.exceptions import ConnectionClosed

from eformws.runtime.config import load_config


def aio(awaitable) -> defer.Deferred:
    """Await an asyncio awaitable from a Twisted-driven test."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))


class Client:
    """A `websockets` connection with Deferred-returning helpers."""

    connection_id: str | None = None  # set by `Server.join`

    def __init__(self, connection):
        self.connection = connection

    async def _recv_json(self, timeout):
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        return json.loads(raw)

    def recv(self, timeout: float = 5.0) -> defer.Deferred:
        """The next message as JSON."""
        return aio(self._recv_json(timeout))

    def recv_raw(self, timeout: float = 5.0) -> defer.Deferred:
        return aio(asyncio.wait_for(self.connection.recv(), timeout))

    def send(self, value) -> defer.Deferred:
        """Send a JSON value (or str/bytes as they are)."""
        if not isinstance(value, (str, bytes)):
            value = json.dumps(value)
        return aio(self.connection.send(value))

    async def _closed(self, timeout):
        try:
            while True:
                await asyncio.wait_for(self.connection.recv(), timeout)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(self.connection.wait_closed(), timeout)
        received = self.connection.protocol.close_rcvd  # websockets >= 14: on the Sans-I/O protocol
        return (received.code, received.reason) if received else (1006, "")

    def closed(self, timeout: float = 5.0) -> defer.Deferred:
        """Fires with (code, reason) the server closed with, reading past any messages."""
        return aio(self._closed(timeout))

    def close(self) -> defer.Deferred:
        return aio(self.connection.close())

    async def _flood(self, frames):
        for frame in frames:
            try:
                await self.connection.send(frame)
            except ConnectionClosed:
                break
        replies = []
        try:
            while True:
                replies.append(json.loads(await asyncio.wait_for(self.connection.recv(), 5)))
        except ConnectionClosed:
            pass
        received = self.connection.protocol.close_rcvd
        return replies, ((received.code, received.reason) if received else (1006, ""))

    def flood(self, frames) -> defer.Deferred:
        """Send every frame without waiting, then read until the server closes; fires with
        (the replies as JSON, (close code, reason))."""
        return aio(self._flood(frames))


class Server:
    def __init__(self, service):
        self.service = service
        self.hub = service.hub

    @property
    def port(self) -> int:
        return self.service.port

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def session(self, user="alice", role="admin", kiosk=None, ttl=3600.0) -> defer.Deferred:
        """Create a session in the server's own store; fires with its id."""
        d = self.service.sessions.create(user, role, kiosk, ttl)
        d.addCallback(lambda session: session.id)
        return d

    def connect(self, path: str, **kwargs) -> defer.Deferred:
        """Open a raw connection (no message read); fires with a `Client`."""
        d = aio(websockets.connect(self.url(path), max_size=None, **kwargs))
        d.addCallback(Client)
        return d

    async def join(self, path: str, session_id: str | None = None, rooms=(), **kwargs) -> Client:
        """Connect with `?sessionId=` (none without `session_id`; `kwargs` to `websockets`),
        read `connection` and, where the namespace has a default room, `room_joined`; then
        join each of `rooms`, answered `room_joined` with nothing else. The client's
        `connection_id` is the one `connection` gave."""
        query = f"?sessionId={session_id}" if session_id else ""
        client = await self.connect(path + query, **kwargs)
        first = await client.recv()
        assert first["type"] == "connection", first
        client.connection_id = first["data"]["connectionId"]
        if self.hub.namespaces[path].default_room is not None:
            second = await client.recv()
            assert second["type"] == "room_joined", second
        for room in rooms:
            await client.send({"type": "join_room", "room": room})
            reply = await client.recv()
            assert reply == {"type": "room_joined", "data": {"room": room}, "timestamp": reply.get("timestamp")}, reply
        return client


# -- helpers the test modules share (imported from here: `from conftest import refused`) --------

REFUSED = 1008  # the close code of every refusal after the handshake (policy violation)
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # every timestamp on the wire


def parse_ts(text: str) -> float:
    """A wire timestamp (`TS`) as seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def within(d: defer.Deferred, seconds: float = 5.0) -> defer.Deferred:
    """`d`, failed with a TimeoutError if it has not fired in time (no test hangs)."""
    from twisted.internet import reactor  # the asyncio reactor pytest-twisted installed

    return d.addTimeout(seconds, reactor)


def bearer(credential: str) -> dict:
    """An `Authorization: Bearer` header (a session id or an API token)."""
    return {"Authorization": f"Bearer {credential}"}


def session_cookie(session_id: str) -> dict:
    """A `Cookie` header carrying `sessionId`."""
    return {"Cookie": f"sessionId={session_id}"}


def locker(n: int = 12, kiosk: str = "kiosk-1", **extra) -> dict:
    """Valid `locker_state_changed` data: locker `n` of `kiosk`, closed to open, plus `extra`
    (which may replace any field)."""
    return {"lockerId": f"{kiosk}:{n}", "oldState": "closed", "newState": "open", "kioskId": kiosk, **extra}


async def ask(client, message) -> dict:
    """Send `message` and read the next message (its answer, where nothing else is due)."""
    await client.send(message)
    return await client.recv()


async def accepted(client) -> dict:
    """Read `connection` then `room_joined` (the namespace has a default room); return the
    connection data. Fails if the server refused or sent anything else first."""
    connection = await client.recv()
    assert connection["type"] == "connection", connection
    joined = await client.recv()
    assert joined["type"] == "room_joined", joined
    return connection["data"]


async def refused(client) -> tuple[int, str]:
    """The handshake completed, then the server closed before sending any message: the
    (code, reason) it closed with."""
    with pytest.raises(ConnectionClosed):
        message = await aio(asyncio.wait_for(client.connection.recv(), 5.0))
        pytest.fail(f"refused connection got a message first: {message!r}")
    return await client.closed()


async def handshake_status(server, path: str, **kwargs) -> int:
    """The HTTP status a handshake that the server rejects is answered with."""
    with pytest.raises(websockets.InvalidStatus) as rejected:
        client = await server.connect(path, **kwargs)
        await client.close()
    return rejected.value.response.status_code


async def until_pong(client, raw: bool = False) -> list:
    """Send a ping with a fresh marker and read up to its pong: everything the client got
    before it (the server answers in order, so anything sent earlier arrives first). As JSON,
    or with `raw` as the text frames were sent. Only meaningful once no replay or resume is
    running: live frames are held back meanwhile, a pong (a reply) never is."""
    marker = str(uuid.uuid4())
    await client.send({"type": "ping", "data": {"timestamp": marker}})
    got = []
    while True:
        frame = await client.recv_raw()
        message = json.loads(frame)
        data = message.get("data")
        if message.get("type") == "pong" and isinstance(data, dict) and data.get("timestamp") == marker:
            return got
        got.append(frame if raw else message)


async def assert_got_nothing(client) -> None:
    """Nothing was sent to the client (the connection is open and in sync): a ping's pong is
    its very next message."""
    got = await until_pong(client)
    assert got == [], got


def make_config(tmp_path, **overrides):
    """A configuration for tests: loopback, port 0, SQLite file in `tmp_path`."""
    values = {
        ("server", "port"): 0,
        ("server", "host"): "127.0.0.1",
        ("sessions", "path"): str(tmp_path / "eformws.db"),
        ("events", "path"): str(tmp_path / "eformws.db"),  # else events land in the working directory and replay into later tests
    }
    values.update({tuple(key.split(".")): value for key, value in overrides.items()})
    return load_config(overrides=values, environ={})


@pytest.fixture
def start_service():
    """`await start_service(config)`: an eformws service of that Config, started and
    listening; stopped after the test."""
    # Imported here: Klein installs the default reactor on import, and pytest-twisted
    # must install the asyncio reactor first.
    from eformws.runtime.service import EformService

    started: list[EformService] = []

    async def start(config) -> Server:
        service = EformService(config)
        service.startService()
        started.append(service)
        await service.ready  # listening
        return Server(service)

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(service.stopService())


@pytest.fixture
def start_server(tmp_path, start_service):
    """`await start_server({"section.key": value})` starts a server; stopped after the test."""

    def start(overrides: dict | None = None):
        return start_service(make_config(tmp_path, **(overrides or {})))

    return start


@pytest.fixture
def start_configured(tmp_path, start_service):
    """`await start_configured(toml_text)`: a server built from a real TOML configuration file
    (loopback, port 0, SQLite in `tmp_path`, plus `toml_text`); stopped after the test."""
    from processes import write_config

    def start(extra_toml: str = ""):
        return start_service(load_config(str(write_config(tmp_path, extra_toml)), environ={}))

    return start


@pytest_twisted.async_fixture
async def server(start_server):
    return await start_server()


@pytest.fixture
def spawn():
    """`await spawn(args, cwd)` starts `twistd -n eformws <args>` (tests/processes.py)."""
    from processes import spawning

    yield from spawning()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """The suite's Redis: EFORMWS_TEST_REDIS_URL (scripts/test starts one), else a
    redis-server of the suite's own. Tests keep apart by key prefix (`redis_prefix`)."""
    import os

    url = os.environ.get("EFORMWS_TEST_REDIS_URL")
    if url:
        yield url
        return
    from processes import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    pytest_twisted.blockon(defer.ensureDeferred(server.start()))
    yield server.url
    pytest_twisted.blockon(defer.ensureDeferred(server.stop()))


@pytest.fixture
def redis_prefix():
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


async def redis_time_ms(connection) -> int:
    """Redis's clock (TIME), in milliseconds."""
    seconds, micros = await connection.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def until_redis_clock_passes(connection, milliseconds: float) -> None:
    """Wait (asking Redis's TIME, a round trip at a time) until Redis's clock has moved
    `milliseconds` past now: windows measured by Redis have no event to await."""
    deadline = await redis_time_ms(connection) + milliseconds
    while await redis_time_ms(connection) <= deadline:
        pass


class Awaited:
    """A recorder whose `until(condition)` fires once the condition holds: checked at once,
    then again at each `wake()` (call it whenever something was recorded)."""

    def __init__(self):
        self._waiting: list = []

    def wake(self) -> None:
        for condition, d in list(self._waiting):
            if condition():
                self._waiting.remove((condition, d))
                d.callback(None)

    def until(self, condition, seconds: float = 10.0) -> defer.Deferred:
        d = defer.Deferred()
        if condition():
            d.callback(None)
        else:
            self._waiting.append((condition, d))
        return within(d, seconds)


# The Redis connections of a gateway process, by the name its logs and metrics give them
# (docs/operations.md): one per kind of work, and a blocking reader per stream.
REDIS_CONNECTIONS = ("lookups", "writes", "event log queries", "bus reader", "event log reader")


@pytest_twisted.async_yield_fixture
async def own_redis(tmp_path):
    """A redis-server of this test's own on a free port: its settings can be changed, it
    can be stopped and started again."""
    from processes import RedisServer  # processes imports this module

    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def redis_admin(own_redis):
    """An administrator's connection to `own_redis`, connected: to pause it, fill it, empty it
    or cut every client's link (`CLIENT KILL`) while gateways use it."""
    from eformws.backends.redis import RedisAddress, RedisConnection

    admin = RedisConnection(RedisAddress.parse(own_redis.url), "test", 0.05, 0.2)
    admin.startService()
    await within(admin.when_connected())
    yield admin
    admin.stopService()
