"""`twistd eformws`: the command-line options and `makeService`, which loads the
configuration (one line and exit 1 on a bad value) and builds the gateway service."""

from __future__ import annotations

import sys

from twisted.python import usage

from eformws.runtime.config import ConfigError, load_config
from eformws.runtime.listener import CannotListen, bind_listener


class Options(usage.Options):
    synopsis = "[--config FILE] [--port PORT] [--host HOST]"
    longdesc = (
        "Run the eformws real-time gateway. With no options it serves ws://0.0.0.0:3000 "
        "with the embedded defaults (SQLite file eformws.db in the working directory). "
        "Options override EFORMWS_<SECTION>_<KEY> variables, which override the configuration "
        "file, which overrides the defaults; see etc/eformws.toml for every key."
    )
    internal = ("--inherit-fd=", "--worker-index=")  # set by the worker parent: not in --help

    def getUsage(self, width=None):
        """Twisted's usage without the internal options (each entry: its line and the
        indented lines that continue it)."""
        kept, skipping = [], False
        for line in super().getUsage(width).splitlines():
            if line.startswith("  ") and line.lstrip().startswith(("-",)):
                skipping = line.split()[0] in self.internal
            elif not line.startswith("                 "):
                skipping = False
            if not skipping:
                kept.append(line)
        return "\n".join(kept) + "\n"
    optFlags = [
        ["demo", None, "Demo: a throw-away store, an admin session printed on start, a generator of "
         "realistic events and simulated kiosk, staff and WAMP clients (see also `eformws demo`)."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: none, embedded defaults)."],
        ["port", "p", None, "TCP port to listen on (server.port, default 3000; 0 picks one).", int],
        ["host", None, None, "Interface to listen on (server.host, default 0.0.0.0; 127.0.0.1 with --demo)."],
        ["sessions-db", None, None, "SQLite file of the session store (sessions.path)."],
        ["redis", None, None, "Redis URL, redis://host:port/db (redis.url): deliver across processes."],
        ["tls-certificate", None, None, "PEM certificate chain: serve wss:// and https:// (server.tls_certificate)."],
        ["tls-private-key", None, None, "PEM private key of that certificate (server.tls_private_key)."],
        ["workers", "w", None, "Worker processes sharing the port (server.workers; above 1 needs Redis).", int],
        ["inherit-fd", None, None, "(internal) adopt this listening socket; set by the worker parent.", int],
        ["worker-index", None, None, "(internal) which worker this is; set by the worker parent.", int],
    ]

    def overrides(self) -> dict:
        chosen = {}
        if self["port"] is not None:
            chosen[("server", "port")] = self["port"]
        if self["host"] is not None:
            chosen[("server", "host")] = self["host"]
        if self["sessions-db"] is not None:
            chosen[("sessions", "path")] = self["sessions-db"]
        if self["redis"] is not None:
            chosen[("redis", "url")] = self["redis"]
        if self["workers"] is not None:
            chosen[("server", "workers")] = self["workers"]
        if self["tls-certificate"] is not None:
            chosen[("server", "tls_certificate")] = self["tls-certificate"]
        if self["tls-private-key"] is not None:
            chosen[("server", "tls_private_key")] = self["tls-private-key"]
        return chosen

    def child_arguments(self) -> list[str]:
        """The options a worker gets from its parent (the socket comes separately)."""
        arguments = []
        for name in ("config", "sessions-db", "redis", "tls-certificate", "tls-private-key"):
            if self[name] is not None:
                arguments += [f"--{name}", str(self[name])]
        return arguments


def makeService(options):
    from eformws.runtime.service import EformService
    from eformws.runtime.tls import tls_options
    from eformws.runtime.workers import WorkerParent, end_with_parent

    try:
        if options["demo"]:
            return _demo(options)
        config = load_config(options["config"], options.overrides())
        if options["inherit-fd"] is not None:
            end_with_parent()
            return EformService(config, inherited_fd=options["inherit-fd"])
        if config.get("server", "workers") > 1:
            if config.get("server", "tls_certificate"):
                tls_options(config.get("server", "tls_certificate"), config.get("server", "tls_private_key"))
            return WorkerParent(config, options.child_arguments(), listener=_bound(config))
        return EformService(config, inherited_fd=_bound(config).detach(), rawsocket_fd=_bound_rawsocket(config))
    except ConfigError as e:
        sys.stderr.write(f"eformws: configuration error: {e}\n")
        raise SystemExit(1)
    except CannotListen as e:
        sys.stderr.write(f"eformws: {e}\n")
        raise SystemExit(1)


def _bound(config):
    """The port, bound now: the service accepts on it once it is ready (clients wait in the
    backlog meanwhile)."""
    return bind_listener(config.get("server", "host"), config.get("server", "port"), config.get("server", "backlog"))


def _bound_rawsocket(config) -> int | None:
    """The RawSocket port (`wamp.rawsocket_port`), bound now like the port; None when unset."""
    port = config.get("wamp", "rawsocket_port")
    if port is None:
        return None
    return bind_listener(config.get("server", "host"), port, config.get("server", "backlog")).detach()


def _demo(options):
    """The demo: this machine only (127.0.0.1) unless --host says otherwise, its stores in
    a temporary directory that goes when it stops."""
    import shutil
    import tempfile

    from eformws.runtime.demo import DemoService, demo_config

    overrides = options.overrides()
    overrides.setdefault(("server", "host"), "127.0.0.1")
    directory = tempfile.mkdtemp(prefix="eformws-demo-")
    try:
        config = demo_config(overrides, options["config"], directory)
        if config.get("server", "workers") > 1:
            raise ConfigError("server.workers: the demo runs one process")
        listener = _bound(config)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return DemoService(config, inherited_fd=listener.detach(), directory=directory)
