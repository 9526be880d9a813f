"""The processes a check runs against: eformws gateways (`twistd -n eformws`, each on a fixed
free port that a restart keeps) and a Redis with AOF; started, signalled and restarted here."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
API_TOKEN = "checker-token"
LISTENING = re.compile(rb"eformws listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the checker dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def environment() -> dict:
    """This environment without EFORMWS_* settings, with unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """One child process at a time under a name, its output appended to `log_path` (each start
    marked), with signals and a bounded stop. `started` counts starts."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.paused = False
        self.started = 0
        self._pump: asyncio.Task | None = None
        self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self, argv: list[str], watch: re.Pattern | None = None, env: dict | None = None,
                    cwd: Path | None = None) -> asyncio.Future:
        """Start `argv` (in `cwd`, default its directory; `env` added to the environment);
        the future fires with the first match of `watch` in its output."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._log = open(self.log_path, "ab")
        self._log.write(f"==== checker: start {self.started + 1} at {time.time():.3f}: {' '.join(argv)}\n".encode())
        self._log.flush()
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd or self.workdir, env={**environment(), **(env or {})}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        self.started += 1
        self.paused = False
        found = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._copy(self.proc, self._log, watch, found))
        return found

    @staticmethod
    async def _copy(proc, log, watch, found) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            log.write(line)
            log.flush()
            if watch is not None and not found.done():
                match = watch.search(line)
                if match:
                    found.set_result(match)
        await proc.wait()
        log.write(f"==== checker: exited with {proc.returncode} at {time.time():.3f}\n".encode())
        log.close()
        if not found.done():
            if watch is None:
                found.set_result(None)
            else:
                found.set_exception(RuntimeError(f"exited with {proc.returncode} before it was ready"))

    def signal(self, signum: int) -> None:
        if self.running:
            self.proc.send_signal(signum)
            if signum == signal.SIGSTOP:
                self.paused = True
            elif signum == signal.SIGCONT:
                self.paused = False

    async def wait(self) -> int:
        await self.proc.wait()
        if self._pump is not None:
            await self._pump
        return self.proc.returncode

    async def kill(self) -> None:
        """SIGKILL and wait for the end."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            await self.wait()
        self.paused = False

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (SIGCONT first if paused), then SIGKILL after `timeout`; the exit code."""
        if not self.running:
            return self.proc.returncode if self.proc is not None else None
        if self.paused:
            self.signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Gateway(Process):
    """`twistd -n eformws` with a configuration of its own in its own directory, on `port`."""

    def __init__(self, name: str, workdir: Path, port: int, *, redis_url: str = "", prefix: str = "",
                 events_path: Path | None = None, sessions_path: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(name, workdir)
        self.port = port
        self.config_path = workdir / "eformws.toml"
        events_path = events_path or workdir / "events.db"
        sessions_path = sessions_path or workdir / "sessions.db"
        lines = [
            "[server]", 'host = "127.0.0.1"', f"port = {port}", "shutdown_timeout = 2.0",
            "[auth]", f"api_tokens = [{json.dumps(API_TOKEN)}]",
            "[sessions]", f"path = {json.dumps(str(sessions_path))}",
            "[events]", f"path = {json.dumps(str(events_path))}",
        ]
        if redis_url:
            lines += [
                "[redis]", f"url = {json.dumps(redis_url)}", f"prefix = {json.dumps(prefix)}",
                "reconnect_initial_delay = 0.05", "reconnect_max_delay = 0.5",
                "node_heartbeat = 0.2", "node_ttl = 2.0", "emit_timeout = 5.0",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start and wait for the listening line (on the configured port)."""
        argv = [str(BIN / "twistd"), "--pidfile=", "-n", "eformws", "--config", str(self.config_path)]
        ready = await self.spawn(argv, LISTENING)
        try:
            match = await asyncio.wait_for(ready, timeout)
        except (asyncio.TimeoutError, RuntimeError) as e:
            await self.kill()
            raise RuntimeError(f"gateway {self.name} did not start ({e}):\n{self.tail()}") from None
        if int(match.group(1)) != self.port:
            raise RuntimeError(f"gateway {self.name} listens on {match.group(1)}, not {self.port}")

    async def create_session(self) -> str:
        """`eformws sessions create` against this gateway's configuration (its store)."""
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "eformws"), "sessions", "create", "--user", "chk", "--role", "admin",
            "--config", str(self.config_path), cwd=self.workdir, env=environment(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"eformws sessions create failed: {err.decode(errors='replace')}")
        return out.decode().strip()


class Redis(Process):
    """redis-server on loopback with AOF (fsync always, no RDB snapshots) in its own
    directory; `stop()` is a graceful SIGTERM, `start()` again keeps port and data."""

    def __init__(self, workdir: Path, port: int):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__("redis", workdir)
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        await self.spawn(argv)
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"redis exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if await command(self.port, "PING", timeout=1.0) == "PONG":
                    return
            except (OSError, RedisError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass
            if time.monotonic() > deadline:
                await self.kill()
                raise RuntimeError(f"redis did not answer PING within {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        return await self.terminate()


class RedisError(Exception):
    """An error reply."""


async def _reply(reader: asyncio.StreamReader):
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = await reader.readexactly(size + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        size = int(rest)
        if size < 0:
            return None
        return [await _reply(reader) for _ in range(size)]
    raise RedisError(f"unexpected reply {line[:40]!r}")


async def command(port: int, *args, timeout: float = 10.0):
    """One command on a connection of its own (the checker's few direct reads of Redis)."""

    async def run():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            parts = [str(a).encode() for a in args]
            writer.write(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            await writer.drain()
            return await _reply(reader)
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)
