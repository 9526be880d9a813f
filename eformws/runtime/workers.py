"""`twistd eformws --workers N`: the parent binds the one listening socket and runs N worker
processes that adopt it (all delivering through Redis); a worker that dies is restarted."""

from __future__ import annotations

import os
import signal
import socket
import sys

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from eformws.core.compat import forget_exit_signal
from eformws.runtime.listener import bind_listener

log = Logger(namespace="eformws.workers")

LISTEN_FD = 3
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 10.0
STABLE_AFTER = 30.0  # a worker that lived this long restarts without backoff


class Worker(ProcessProtocol):
    def __init__(self, parent: "WorkerParent", index: int, started: float):
        self.parent = parent
        self.index = index
        self.started = started
        self.ended = Deferred()

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode if hasattr(reason.value, "exitCode") else None)
        self.parent.worker_ended(self, reason.value)


class WorkerParent(Service):
    def __init__(self, config, child_arguments: list[str], reactor=None, listener: socket.socket | None = None):
        self.config = config
        self.count = config.get("server", "workers")
        self.child_arguments = child_arguments
        self._reactor = reactor
        self.socket: socket.socket | None = listener  # bound by makeService (eformws.runtime.listener), else on start
        self.workers: dict[int, Worker] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def startService(self):
        super().startService()
        config = self.config
        if self.socket is None:
            self.socket = bind_listener(config.get("server", "host"), config.get("server", "port"),
                                        config.get("server", "backlog"))
        log.info(
            "eformws listening on {host}:{port} with {count} workers",
            host=config.get("server", "host"), port=self.port, count=self.count,
        )
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        if self._stopping:
            return
        arguments = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "eformws",
            "--inherit-fd", str(LISTEN_FD), "--worker-index", str(index), *self.child_arguments,
        ]
        worker = Worker(self, index, self.reactor.seconds())
        self.workers[index] = worker
        self.reactor.spawnProcess(
            worker, sys.executable, arguments, env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: self.socket.fileno()},
        )
        log.info("started worker {index}", index=index)

    def worker_ended(self, worker: Worker, reason) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        lived = self.reactor.seconds() - worker.started
        delay = RESTART_DELAY if lived >= STABLE_AFTER else min(
            self._delays.get(worker.index, RESTART_DELAY / 2) * 2, RESTART_DELAY_MAX
        )
        self._delays[worker.index] = delay
        log.warn("worker {index} ended ({reason}); restarting in {delay:.1f}s", index=worker.index, reason=reason, delay=delay)
        self.reactor.callLater(delay, self.spawn, worker.index)

    def stopService(self):
        """Ask every worker to shut down (each closes its clients with 1001), then wait."""
        super().stopService()
        self._stopping = True
        ended = [worker.ended for worker in self.workers.values()]
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                pass
        bound = self.config.get("server", "shutdown_timeout") + 5.0

        def kill_remaining():
            for worker in list(self.workers.values()):
                try:
                    worker.transport.signalProcess("KILL")
                except Exception:
                    pass

        call = self.reactor.callLater(bound, kill_remaining)
        d = DeferredList(ended, consumeErrors=True)

        def done(_):
            if call.active():
                call.cancel()
            if self.socket is not None:
                self.socket.close()
            forget_exit_signal(self.reactor)  # an orderly shutdown: exit 0
            log.info("eformws stopped")

        d.addBoth(done)
        return d


def end_with_parent() -> None:
    """In a worker: have Linux send SIGTERM when the parent dies, even by SIGKILL, so no
    worker outlives its parent holding the port (elsewhere, nothing happens)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)
