"""The gateway as operators run it: real `twistd -n eformws` processes and the `eformws`
command (PROTOCOL.md section 3 "Shutdown", section 2 on logs, section 7 /healthz).

Processes are spawned through the reactor (never blocking it): a ProcessProtocol collects
their output as it comes, fires a Deferred when a log line appears, and another when the
process ends. Every wait is on one of those Deferreds, bounded by a timeout."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue

from conftest import Client, aio
from eformws.sessions.sqlite import lookup_session
from eformws.sqlite import connect

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
EFORMWS = str(BIN / "eformws")
TIMEOUT = 30.0
LISTENING = r"eformws listening on 127\.0\.0\.1:(\d+)"
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{32,}$")


def _reactor():
    from twisted.internet import reactor  # the asyncio reactor pytest-twisted installed

    return reactor


def environment() -> dict:
    """This environment without EFORMWS_* settings, with unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(executable: str, *args: str, cwd: Path) -> defer.Deferred:
    """Run a command to its end; fires with (stdout text, stderr text, exit code)."""
    d = getProcessOutputAndValue(executable, args, env=environment(), path=str(cwd), reactor=_reactor())
    d.addTimeout(TIMEOUT, _reactor())
    d.addCallback(lambda r: (r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace"), r[2]))
    return d


def eformws(*args: str, cwd: Path) -> defer.Deferred:
    return run(EFORMWS, *args, cwd=cwd)


class Process(protocol.ProcessProtocol):
    """A running process: its output so far, `line(pattern)` and `ended()` Deferreds."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self._lines: list[tuple[re.Pattern, defer.Deferred]] = []
        self._end = None  # (exit code, signal) once ended
        self._ended: list[defer.Deferred] = []

    @property
    def log(self) -> str:
        return (self.out + self.err).decode("utf-8", "replace")

    def outReceived(self, data):
        self.out += data
        self._match()

    def errReceived(self, data):
        self.err += data

    def _match(self):
        text = self.out.decode("utf-8", "replace")
        for entry in list(self._lines):
            pattern, d = entry
            found = pattern.search(text)
            if found:
                self._lines.remove(entry)
                if not d.called:
                    d.callback(found)

    def line(self, pattern: str) -> defer.Deferred:
        """Fires with the match once `pattern` appears on stdout."""
        d = defer.Deferred()
        if self._end is not None:
            found = re.search(pattern, self.out.decode("utf-8", "replace"))
            return defer.succeed(found) if found else defer.fail(AssertionError(f"ended without {pattern!r}:\n{self.log}"))
        self._lines.append((re.compile(pattern), d))
        self._match()
        d.addTimeout(TIMEOUT, _reactor())
        return d

    def ended(self) -> defer.Deferred:
        """Fires with (exit code, signal) once the process has ended."""
        if self._end is not None:
            return defer.succeed(self._end)
        d = defer.Deferred()
        self._ended.append(d)
        d.addTimeout(TIMEOUT, _reactor())
        return d

    def processEnded(self, reason):
        self._end = (reason.value.exitCode, reason.value.signal)
        for _, d in self._lines:
            if not d.called:
                d.errback(AssertionError(f"process ended ({self._end}) before the line:\n{self.log}"))
        self._lines = []
        for d in self._ended:
            if not d.called:
                d.callback(self._end)
        self._ended = []

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)


class Gateway:
    """A `twistd -n eformws` process that has logged its listening line."""

    def __init__(self, process: Process, port: int):
        self.process = process
        self.port = port

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def connect(self, path: str, **kwargs) -> defer.Deferred:
        d = aio(websockets.connect(f"ws://127.0.0.1:{self.port}{path}", max_size=None, **kwargs))
        d.addCallback(Client)
        return d

    async def join(self, path: str, session_id: str) -> Client:
        client = await self.connect(f"{path}?sessionId={session_id}")
        connection = await client.recv()
        assert connection["type"] == "connection", connection
        assert connection["data"]["authenticated"] is True
        joined = await client.recv()
        assert joined["type"] == "room_joined", joined
        return client


@pytest.fixture
def spawn():
    """`await spawn(args, cwd)` starts `twistd -n eformws <args>` and waits for its listening
    line; whatever is still running at the end of the test is killed."""
    processes: list[Process] = []

    def start(args, cwd: Path) -> Process:
        process = Process()
        argv = [TWISTD, "-n", "eformws", *args]
        _reactor().spawnProcess(process, TWISTD, argv, env=environment(), path=str(cwd))
        processes.append(process)
        return process

    async def start_gateway(args, cwd: Path) -> Gateway:
        process = start(args, cwd)
        found = await process.line(LISTENING)
        return Gateway(process, int(found.group(1)))

    start_gateway.raw = start
    yield start_gateway
    for process in processes:
        if process._end is None:
            process.signal("KILL")
            pytest_twisted.blockon(process.ended())


def write_config(directory: Path, text: str = "") -> Path:
    """A TOML file putting sessions and events in `directory`, plus `text`."""
    path = directory / "eformws.toml"
    path.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[sessions]\n"
        f"path = {json.dumps(str(directory / 'sessions.db'))}\n"
        "[events]\n"
        f"path = {json.dumps(str(directory / 'events.db'))}\n" + text
    )
    return path


async def create_session(cwd: Path, config: Path, user="alice", role="admin") -> str:
    out, err, code = await eformws("sessions", "create", "--user", user, "--role", role, "--config", str(config), cwd=cwd)
    assert code == 0, err
    return out.strip()


async def refused(client) -> tuple[int, str]:
    """(code, reason) of a connection the server closed before sending any message."""
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed):
        message = await client.recv()
        pytest.fail(f"refused connection got a message first: {message!r}")
    return await client.closed()


# -- twistd plugin ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_twistd_help_lists_eformws(tmp_path):
    out, err, code = await run(TWISTD, "--help", cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^\s+eformws\s+\S", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_twistd_eformws_help_documents_port_and_config(tmp_path):
    out, err, code = await run(TWISTD, "eformws", "--help", cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"-p, --port=\s+TCP port", out), out
    assert re.search(r"-c, --config=\s+TOML configuration file", out), out


@pytest_twisted.ensureDeferred
async def test_twistd_without_config_starts_creates_db_in_working_dir_and_serves_healthz(tmp_path, spawn):
    assert not (tmp_path / "eformws.db").exists()
    gateway = await spawn(["--port", "0", "--host", "127.0.0.1"], tmp_path)
    assert (tmp_path / "eformws.db").is_file()
    response = await treq.get(gateway.http("/healthz"), persistent=False)
    assert response.code == 200
    body = await response.json()
    assert body["status"] == "ok"
    gateway.process.signal("TERM")
    assert await gateway.process.ended() == (0, None)


# -- the eformws command --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cli_sessions_create_prints_only_the_id(tmp_path):
    config = write_config(tmp_path)
    out, err, code = await eformws(
        "sessions", "create", "--user", "alice", "--role", "admin", "--config", str(config), cwd=tmp_path
    )
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1 and out == lines[0] + "\n", out
    assert SESSION_ID.match(lines[0]), out
    database = connect(str(tmp_path / "sessions.db"))  # the configured store, not the working dir's
    try:
        session = lookup_session(database, lines[0])
    finally:
        database.close()
    assert (session.user_id, session.role) == ("alice", "admin")
    assert not (tmp_path / "eformws.db").exists()


@pytest_twisted.ensureDeferred
async def test_cli_sessions_list_shows_the_user_and_never_the_id(tmp_path):
    config = write_config(tmp_path)
    alice = await create_session(tmp_path, config, "alice", "admin")
    bob = await create_session(tmp_path, config, "bob-the-kiosk", "kiosk")
    out, err, code = await eformws("sessions", "list", "--config", str(config), cwd=tmp_path)
    assert code == 0, err
    rows = out.splitlines()[1:]
    assert len(rows) == 2, out
    assert re.search(r"\balice\s+admin\b.*\blive$", rows[0]), out
    assert re.search(r"\bbob-the-kiosk\s+kiosk\b.*\blive$", rows[1]), out
    for session_id in (alice, bob):
        assert session_id not in out + err
        assert session_id[:8] not in out + err


@pytest_twisted.ensureDeferred
async def test_cli_session_is_accepted_by_running_twistd(tmp_path, spawn):
    config = write_config(tmp_path)
    session_id = await create_session(tmp_path, config, "alice", "staff")
    gateway = await spawn(["--config", str(config)], tmp_path)
    client = await gateway.join("/ws/help", session_id)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_cli_sessions_revoke_makes_running_twistd_refuse_the_session(tmp_path, spawn):
    config = write_config(tmp_path)
    session_id = await create_session(tmp_path, config)
    gateway = await spawn(["--config", str(config)], tmp_path)
    client = await gateway.join("/ws/lockers", session_id)  # accepted before the revoke
    await client.close()

    out, err, code = await eformws("sessions", "revoke", session_id, "--config", str(config), cwd=tmp_path)
    assert code == 0, err

    client = await gateway.connect(f"/ws/lockers?sessionId={session_id}")
    assert await refused(client) == (1008, "Authentication failed")
    out, err, code = await eformws("sessions", "list", "--config", str(config), cwd=tmp_path)
    assert out.splitlines()[1].endswith("revoked"), out


@pytest_twisted.ensureDeferred
async def test_cli_create_with_unknown_role_fails_without_traceback(tmp_path):
    config = write_config(tmp_path)
    out, err, code = await eformws(
        "sessions", "create", "--user", "x", "--role", "nope", "--config", str(config), cwd=tmp_path
    )
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    assert "nope" in err and "--role" in err, err


@pytest_twisted.ensureDeferred
async def test_cli_revoke_of_unknown_id_is_one_line_and_exit_1(tmp_path):
    config = write_config(tmp_path)
    await create_session(tmp_path, config)  # a store with a session, just not this one
    out, err, code = await eformws(
        "sessions", "revoke", secrets.token_urlsafe(32), "--config", str(config), cwd=tmp_path
    )
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("eformws: ") and "Traceback" not in err


# -- configuration errors ---------------------------------------------------------------


async def start_with_bad_config(tmp_path, text: str) -> tuple[str, str, int]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return await run(TWISTD, "-n", "eformws", "--config", str(path), cwd=tmp_path)


@pytest_twisted.ensureDeferred
async def test_bad_config_value_exits_1_with_one_line_naming_the_key(tmp_path):
    out, err, code = await start_with_bad_config(tmp_path, '[server]\nport = "abc"\n')
    assert code == 1
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert "server.port" in err and "'abc'" in err
    assert "Traceback" not in out + err
    assert "listening" not in out


@pytest_twisted.ensureDeferred
async def test_unknown_config_key_exits_1_with_one_line_naming_it(tmp_path):
    out, err, code = await start_with_bad_config(tmp_path, "[server]\nport = 0\nprot = 3000\n")
    assert code == 1
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert "server.prot" in err and "unknown key" in err
    assert "Traceback" not in out + err


# -- shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
@pytest_twisted.ensureDeferred
async def test_signal_closes_every_client_with_1001_server_shutdown_and_exits_0(tmp_path, spawn, signal_name):
    config = write_config(tmp_path)
    session_id = await create_session(tmp_path, config)
    gateway = await spawn(["--config", str(config)], tmp_path)
    clients = [
        await gateway.join(path, session_id)
        for path in ("/ws/lockers", "/ws/lockers", "/ws/help", "/ws/events")
    ]
    closing = [client.closed(timeout=TIMEOUT) for client in clients]
    gateway.process.signal(signal_name)
    for d in closing:
        assert await d == (1001, "Server shutdown")
    assert await gateway.process.ended() == (0, None)
    assert f"Received SIG{signal_name}" in gateway.process.log


# -- logs ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_id_in_query_never_appears_in_server_log(tmp_path, spawn):
    config = write_config(tmp_path, '[log]\nlevel = "debug"\n')
    session_id = await create_session(tmp_path, config)
    unknown = secrets.token_urlsafe(32)
    gateway = await spawn(["--config", str(config)], tmp_path)

    client = await gateway.join("/ws/lockers", session_id)
    await client.send({"type": "join_room", "room": "kiosk-1"})
    assert (await client.recv())["type"] == "room_joined"
    stranger = await gateway.connect(f"/ws/lockers?sessionId={unknown}")
    assert await refused(stranger) == (1008, "Authentication failed")
    response = await treq.get(gateway.http(f"/api/websocket/health?sessionId={session_id}"), persistent=False)
    assert response.code == 200
    await treq.content(response)
    # Wait until the server has logged that request, so the log below holds it.
    await gateway.process.line(r'"GET /api/websocket/health\S*" 200')

    gateway.process.signal("TERM")
    assert await client.closed(timeout=TIMEOUT) == (1001, "Server shutdown")
    assert await gateway.process.ended() == (0, None)
    log = gateway.process.log
    assert "refused connection on /ws/lockers: Authentication failed" in log  # connections are logged...
    for secret in (session_id, unknown):
        assert secret not in log  # ... but never with their session id
