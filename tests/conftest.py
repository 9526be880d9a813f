"""Test harness: a real eformws service listening on port 0 with a real SQLite file, and a
WebSocket client from another library (`websockets`) on the same asyncio event loop."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_twisted
import websockets
from twisted.internet import defer
from websockets.exceptions import ConnectionClosed

from eformws.config import load_config


def aio(awaitable) -> defer.Deferred:
    """Await an asyncio awaitable from a Twisted-driven test."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))


class Client:
    """A `websockets` connection with Deferred-returning helpers."""

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

    async def join(self, path: str, session_id: str | None = None) -> Client:
        """Connect with `?sessionId=` and read `connection` and `room_joined`."""
        query = f"?sessionId={session_id}" if session_id else ""
        client = await self.connect(path + query)
        first = await client.recv()
        assert first["type"] == "connection", first
        if self.hub.namespaces[path].default_room is not None:
            second = await client.recv()
            assert second["type"] == "room_joined", second
        return client


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
    from eformws.service import EformService

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
    import uuid

    return f"test-{uuid.uuid4().hex[:12]}:"
