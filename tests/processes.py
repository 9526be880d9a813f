"""Real `twistd -n eformws` processes and the `eformws` command for tests: a ProcessProtocol
that collects output and fires Deferreds on log lines and on exit, and a Gateway handle."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest_twisted
import websockets
from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue

from conftest import Client, accepted, aio

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


def run(executable: str, *args: str, cwd: Path, timeout: float = TIMEOUT) -> defer.Deferred:
    """Run a command to its end; fires with (stdout text, stderr text, exit code)."""
    d = getProcessOutputAndValue(executable, args, env=environment(), path=str(cwd), reactor=_reactor())
    d.addTimeout(timeout, _reactor())
    d.addCallback(lambda r: (r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace"), r[2]))
    return d


def eformws(*args: str, cwd: Path) -> defer.Deferred:
    return run(EFORMWS, *args, cwd=cwd)


class Process(protocol.ProcessProtocol):
    """A running process: its output so far, `line(pattern)` and `ended()` Deferreds."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self._lines: list[tuple[re.Pattern, int, defer.Deferred]] = []
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

    @property
    def mark(self) -> int:
        """Where stdout ends now: `line(pattern, after=mark)` waits for a new line only."""
        return len(self.out)

    def _match(self):
        for entry in list(self._lines):
            pattern, after, d = entry
            found = pattern.search(self.out[after:].decode("utf-8", "replace"))
            if found:
                self._lines.remove(entry)
                if not d.called:
                    d.callback(found)

    def line(self, pattern: str, after: int = 0) -> defer.Deferred:
        """Fires with the match once `pattern` appears on stdout (past byte `after`)."""
        d = defer.Deferred()
        if self._end is not None:
            found = re.search(pattern, self.out[after:].decode("utf-8", "replace"))
            return defer.succeed(found) if found else defer.fail(AssertionError(f"ended without {pattern!r}:\n{self.log}"))
        self._lines.append((re.compile(pattern), after, d))
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
        for _, _, d in self._lines:
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

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def connect(self, path: str, **kwargs) -> defer.Deferred:
        d = aio(websockets.connect(f"ws://127.0.0.1:{self.port}{path}", max_size=None, **kwargs))
        d.addCallback(Client)
        return d

    async def join(self, path: str, session_id: str) -> Client:
        """Connect with `?sessionId=`, read `connection` (authenticated) and `room_joined`."""
        client = await self.connect(f"{path}?sessionId={session_id}")
        assert (await accepted(client))["authenticated"] is True
        return client


def spawning():
    """The `spawn` fixture (conftest): `await spawn(args, cwd)` starts `twistd -n eformws
    <args>` and waits for its listening line; what still runs at the end is killed."""
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


def write_config(directory: Path, text: str = "", sessions: str = "") -> Path:
    """A TOML file putting sessions and events in `directory`, plus `text` (and `sessions`,
    lines of the [sessions] table)."""
    path = directory / "eformws.toml"
    path.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[sessions]\n"
        f"path = {json.dumps(str(directory / 'sessions.db'))}\n" + sessions +
        "[events]\n"
        f"path = {json.dumps(str(directory / 'events.db'))}\n" + text
    )
    return path


async def create_session(cwd: Path, config: Path, user="alice", role="admin", kiosk: str | None = None) -> str:
    kiosk_option = ["--kiosk", kiosk or "kiosk-1"] if role == "kiosk" else []
    out, err, code = await eformws("sessions", "create", "--user", user, "--role", role, *kiosk_option,
                                   "--config", str(config), cwd=cwd)
    assert code == 0, err
    return out.strip()


# -- twistd plugin ------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """The resident memory of process `pid` (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A `redis-server` of our own on a fixed loopback port (appendonly in `directory`, so
    a stop and start keeps the data, as a production Redis would; or, with
    `snapshots_only`, Debian's packaged default: RDB snapshots, no AOF), started, stopped
    and killed through the reactor."""

    def __init__(self, directory: Path, port: int | None = None, snapshots_only: bool = False):
        self.directory = directory
        self.port = port or free_port()
        self.process: Process | None = None
        self.persistence = ["--save", "3600 1", "--appendonly", "no"] if snapshots_only else [
            "--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = Process()
        argv = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            *self.persistence,
        ]
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed: run the README's test command (scripts/test)"
        _reactor().spawnProcess(self.process, executable, argv, env=environment())
        await self.process.line(r"Ready to accept connections")

    async def stop(self, signal: str = "TERM") -> None:
        """SIGTERM: Redis saves and stops; SIGKILL: a crash."""
        if self.process is not None and self.process._end is None:
            self.process.signal(signal)
            await self.process.ended()
