"""The servers the harness starts and stops itself: eformws (`twistd -n eformws`, or the
emit host), the floor (bench/floor.py), Node ws (bench/node/server.js, its `ws` installed by
the harness with `npm ci`), the peer (bench/peer.py), a Redis and Crossbar.io (installed by
the harness in a virtualenv of its own); each on a free loopback port, its output in a log
file of the run directory, its CPU seconds and RSS read from /proc (summed over its worker
processes)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
API_TOKEN = "bench-token"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, from /proc/<pid>/stat."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError):
            pass
    return total / TICKS


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


class Server:
    """A started server process: `name`, `kind`, `port`, `pid`, `stop()`."""

    def __init__(self, name: str, kind: str, port: int, argv: list[str], cwd: Path, env: dict | None = None,
                 stdin: bool = False):
        self.name, self.kind, self.port = name, kind, port
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.session = "bench"  # eformws replaces it with a real session id
        self.replay = 0

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def control(self, line: str, timeout: float = 120.0) -> str:
        """Send a control line on the server's stdin; the answer is the next line of its log
        that is JSON (floor and emit host write it on stdout, which is the log)."""
        mark = self.log_path.stat().st_size
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while time.time() < deadline:
            await asyncio.sleep(0.05)
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                for raw in f.read().splitlines():
                    if raw.startswith(b"{"):
                        return raw.decode()
        raise RuntimeError(f"{self.name}: no answer to {line!r}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in reversed(tree(self.pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.wait()
        self._log.close()


def eformws_config(workdir: Path, port: int, *, max_connections: int, replay_limit: int, backlog: int,
                   redis_url: str = "", workers: int = 1, log_level: str = "info", extra: tuple[str, ...] = ()) -> Path:
    """A configuration for the bench: everything at its default except the port, the
    limits the brief names (backlog, max_connections, replay), an API token for the
    trigger, the store files in the run directory, Redis for workers, and the scenario's
    `extra` TOML lines (sections of their own)."""
    path = workdir / "eformws.toml"
    db = workdir / "eformws.db"
    lines = [
        "[server]", 'host = "127.0.0.1"', f"port = {port}", f"backlog = {backlog}",
        f"max_connections = {max_connections}", f"workers = {workers}",
        "[auth]", f'api_tokens = ["{API_TOKEN}"]',
        "[sessions]", f'path = "{db}"',
        "[events]", f'path = "{db}"', f"replay_limit = {replay_limit}",
        "[log]", f'level = "{log_level}"',
    ]
    if redis_url:
        lines += ["[redis]", f'url = "{redis_url}"']
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_eformws(workdir: Path, *, max_connections: int, replay_limit: int = 0, backlog: int = 4096,
                        redis_url: str = "", workers: int = 1, emit_host: bool = False,
                        extra: tuple[str, ...] = ()) -> Server:
    workdir = workdir / ("eformws-emit" if emit_host else "eformws")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = eformws_config(workdir, port, max_connections=max_connections, replay_limit=replay_limit,
                            backlog=backlog, redis_url=redis_url, workers=workers, extra=extra)
    created = subprocess.run([str(BIN / "eformws"), "sessions", "create", "--user", "bench", "--role", "admin",
                              "--config", str(config)], cwd=workdir, capture_output=True, text=True, timeout=60,
                             check=False)
    if created.returncode != 0:
        raise RuntimeError(f"eformws sessions create failed: {created.stderr}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFORMWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    if emit_host:
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "bench.emit_host", "--config", str(config)]
    else:
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "eformws", "--config", str(config)]
    server = Server("eformws", "eformws", port, argv, workdir, env, stdin=emit_host)
    server.session = created.stdout.strip()
    server.replay = replay_limit
    await server.ready()
    if workers > 1:
        await workers_ready(server, workers)
    return server


async def workers_ready(server: Server, workers: int, timeout: float = 30.0) -> None:
    """Each worker logs that it listens; then /healthz (answered by either worker, and 200
    only once its Redis connections are up) must answer 200 twenty times in a row: a
    worker accepts connections before its Redis session store is connected, and
    handshakes meanwhile are refused 503 (documented: the client retries)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.log_tail(10_000).count("EformService#info] eformws listening on") >= workers:
            break
        await asyncio.sleep(0.1)
    streak = 0
    while streak < 20 and time.time() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        status = (await reader.readline()).split()
        writer.close()
        streak = streak + 1 if len(status) > 1 and status[1] == b"200" else 0
        await asyncio.sleep(0.02)
    if streak < 20:
        raise RuntimeError(f"eformws workers not healthy within {timeout} s:\n{server.log_tail()}")


async def start_floor(workdir: Path, *, replay: int = 0, backlog: int = 4096, redis_url: str = "",
                      workers: int = 1) -> Server:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port), "--backlog", str(backlog), "--replay", str(replay)]
    if workers > 1:
        argv += ["--workers", str(workers), "--redis", redis_url]
    server = Server("floor", "floor", port, argv, workdir, env, stdin=workers == 1)
    server.replay = replay
    await server.ready()
    if workers > 1:  # the workers say so once they adopted the socket and subscribed
        deadline = time.time() + 20
        while server.log_tail(100).count("floor worker ready") < workers and time.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
    return server


# -- Node.js with ws ----------------------------------------------------------------------

NODE_DIR = ROOT / "bench" / "node"


def ensure_node(log=print) -> tuple[list[str] | None, str | dict]:
    """The command that runs bench/node/server.js, with the `ws` that bench/node/package-lock.json
    pins installed (`npm ci --prefix bench/node`, seconds, when node_modules does not hold that
    version yet): (the command, {"node": ..., "ws": ...}) or (None, why not)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return None, "node is not on PATH"
    try:
        found = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
        wanted = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]["node_modules/ws"]["version"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
        return None, f"node --version or bench/node/package-lock.json: {e}"
    if found.returncode != 0:
        return None, f"node --version exited {found.returncode}: {found.stderr.strip()[:300]}"

    def installed() -> str | None:
        try:
            return json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return None

    if installed() != wanted:
        if npm is None:
            return None, f"ws {wanted} is not installed in bench/node and npm is not on PATH"
        log(f"installing ws {wanted} into {NODE_DIR / 'node_modules'} (npm ci)")
        try:
            done = subprocess.run([npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"npm ci --prefix bench/node: {e}"
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
            return None, f"npm ci --prefix bench/node exited {done.returncode}: {tail[0][:300]}"
        if installed() != wanted:
            return None, f"npm ci --prefix bench/node did not install ws {wanted} (found {installed()})"
    return [node, str(NODE_DIR / "server.js")], {"node": found.stdout.strip().lstrip("v"), "ws": wanted}


async def start_node(workdir: Path, command: list[str], *, replay: int = 0, backlog: int = 4096) -> Server:
    """bench/node/server.js (`command`, from ensure_node) on a free port: one process."""
    port = free_port()
    argv = [*command, "--port", str(port), "--backlog", str(backlog), "--replay", str(replay)]
    server = Server("node", "node", port, argv, workdir)
    server.replay = replay
    await server.ready()
    return server


async def start_peer(workdir: Path, *, replay: int = 0, backlog: int = 4096) -> Server:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "bench.peer", "--port", str(port), "--backlog", str(backlog), "--replay", str(replay)]
    server = Server("peer", "peer", port, argv, workdir, env)
    server.replay = replay
    await server.ready()
    return server


async def start_redis(workdir: Path) -> tuple[Server, str]:
    port = free_port()
    rdir = workdir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(rdir), "--save", "",
            "--appendonly", "no"]
    server = Server("redis", "redis", port, argv, workdir)
    await server.ready()
    return server, f"redis://127.0.0.1:{port}/0"


# -- Crossbar.io --------------------------------------------------------------------------

CROSSBAR_VERSION = "26.10.1"  # pins its own Autobahn and Twisted, hence a virtualenv of its own


def crossbar_venv_default() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "eformws-bench" / f"crossbar-{CROSSBAR_VERSION}"


def ensure_crossbar(venv: Path, log=print) -> tuple[Path | None, str]:
    """`crossbar` of a virtualenv at `venv` with Crossbar.io CROSSBAR_VERSION in it, made
    (and `pip install`ed, a minute or two) when it is not there yet: (the executable, its
    versions) or (None, why not). A file `installed.json` marks a finished install."""
    exe, marker = venv / "bin" / "crossbar", venv / "installed.json"
    if exe.exists() and marker.exists():
        return exe, marker.read_text().strip()
    shutil.rmtree(venv, ignore_errors=True)
    install_log = venv.parent / f"{venv.name}-install.log"
    log(f"installing Crossbar.io {CROSSBAR_VERSION} into {venv} (log: {install_log})")
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(install_log, "wb") as out:
            for argv in ([sys.executable, "-m", "venv", str(venv)],
                         [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check",
                          f"crossbar=={CROSSBAR_VERSION}"]):
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False)
                if done.returncode != 0:
                    tail = install_log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                    return None, f"{' '.join(argv[:3])} exited {done.returncode}: {tail[0][:300]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"installing Crossbar.io: {e}"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import crossbar, autobahn, twisted, json; print(json.dumps("
                            "{'crossbar': crossbar.__version__, 'autobahn': autobahn.__version__, "
                            "'twisted': twisted.__version__}))"], capture_output=True, text=True, timeout=120,
                           check=False)
    if probe.returncode != 0 or not exe.exists():
        return None, f"crossbar does not import: {probe.stderr.strip().splitlines()[-1:]}"
    marker.write_text(probe.stdout.strip() + "\n")
    return exe, probe.stdout.strip()


def crossbar_config(port: int, realm: str, role: str, prefix: str) -> dict:
    """One router worker: realm `realm`, a WebSocket transport (JSON) on 127.0.0.1:`port`,
    anonymous authentication as `role`, which may do everything under `prefix`, disclosing
    callers and publishers as eformws's default permission table does."""
    permission = {"uri": prefix, "match": "prefix",
                  "allow": {"call": True, "register": True, "publish": True, "subscribe": True},
                  "disclose": {"caller": True, "publisher": True}, "cache": True}
    return {
        "version": 2,
        "controller": {},
        "workers": [{
            "type": "router",
            "realms": [{"name": realm, "roles": [{"name": role, "permissions": [permission]}]}],
            "transports": [{
                "type": "websocket",
                "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": port, "backlog": 4096},
                "serializers": ["json"],
                "auth": {"anonymous": {"type": "static", "role": role}},
            }],
        }],
    }


async def start_crossbar(workdir: Path, exe: Path, *, realm: str, role: str, prefix: str) -> Server:
    """`crossbar start` (a controller and one router worker process) on a free port; ready
    once the worker listens (several seconds)."""
    workdir = workdir / "crossbar"
    cbdir = workdir / ".crossbar"
    cbdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (cbdir / "config.json").write_text(json.dumps(crossbar_config(port, realm, role, prefix), indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EFORMWS_", "PYTHON", "VIRTUAL_ENV"))}
    server = Server("crossbar", "crossbar", port, [str(exe), "start", "--cbdir", str(cbdir)], workdir, env)
    await server.ready(timeout=90.0)
    return server
