"""The demo: a generator of realistic locker, help-request, command and status events for a
few kiosks, run by `twistd -n eformws --demo` (or `eformws demo`) beside a demo admin session
and simulated kiosk, staff and WAMP clients (eformws/runtime/demo_clients.py)."""

from __future__ import annotations

import os
import random
import shutil
import sys
from itertools import count

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from eformws.core import wire
from eformws.events import ValidationError
from eformws.runtime.demo_clients import SESSION_TTL, DemoClients, client_host

log = Logger(namespace="eformws.demo")

ADMIN = "demo-admin"  # the user of the admin session the demo prints

KIOSKS = ("kiosk-1", "kiosk-2", "kiosk-3")
LOCKERS_PER_KIOSK = 24
NEXT_STATE = {"closed": ("open", "reserved"), "open": ("closed",), "reserved": ("open", "closed"),
              "maintenance": ("closed",), "error": ("maintenance",)}
NOTES = ("door stuck", "card not read", "paid twice", "locker smells", "screen frozen")


class DemoGenerator(TimerService):
    """Every `interval` seconds one event, chosen as a small locker site would produce them:
    mostly doors opening and closing, now and then a help request and its follow-up, a
    command, a component's status."""

    def __init__(self, events, interval: float = 0.7, seed: int | None = None):
        super().__init__(interval, self.emit_one)
        self.events = events
        self.random = random.Random(seed)
        self.states = {(kiosk, n): "closed" for kiosk in KIOSKS for n in range(1, LOCKERS_PER_KIOSK + 1)}
        self.help_ids = count(1001)
        self.command_ids = count(1)
        self.open_requests: list[tuple[int, str]] = []

    def emit_one(self):
        roll = self.random.random()
        if roll < 0.6:
            d = self._locker()
        elif roll < 0.72:
            d = self._help_requested()
        elif roll < 0.8 and self.open_requests:
            d = self._help_status()
        elif roll < 0.92:
            d = self._command()
        else:
            d = self._status()
        d.addErrback(self._failed)
        return None  # never wait: a slow store must not stall the timer

    def _failed(self, failure):
        if failure.check(ValidationError):
            log.error("demo event refused: {error}", error=str(failure.value))
        else:
            log.warn("demo event not emitted: {error}", error=failure.getErrorMessage())

    def _locker(self):
        kiosk, number = self.random.choice(list(self.states))
        old = self.states[(kiosk, number)]
        new = "error" if self.random.random() < 0.02 else self.random.choice(NEXT_STATE[old])
        self.states[(kiosk, number)] = new
        metadata = {"ownerType": "rfid", "ownerKey": f"rfid-{self.random.randrange(16**6):06X}"}
        return self.events.emit_locker_state_changed(
            f"{kiosk}:{number}", old, new, kiosk, user_id=f"user-{self.random.randrange(1, 400)}",
            reason=self.random.choice(("assign", "release", "staff", "timeout")), metadata=metadata,
        )

    def _help_requested(self):
        help_id, kiosk = next(self.help_ids), self.random.choice(KIOSKS)
        self.open_requests.append((help_id, "open"))
        return self.events.emit_help_requested(
            {
                "id": help_id, "kiosk_id": kiosk, "status": "open", "created_at": wire.js_timestamp(),
                "category": self.random.choice(("access_issue", "hardware_problem", "payment_issue", "other")),
                "locker_no": self.random.randrange(1, LOCKERS_PER_KIOSK + 1), "note": self.random.choice(NOTES),
                "user_contact": f"+44 7700 900{self.random.randrange(1000):03d}",
            },
            priority=self.random.choice(("low", "medium", "medium", "high", "urgent")),
        )

    def _help_status(self):
        index = self.random.randrange(len(self.open_requests))
        help_id, status = self.open_requests[index]
        new = "assigned" if status == "open" else "resolved"
        if new == "resolved":
            del self.open_requests[index]
        else:
            self.open_requests[index] = (help_id, new)
        return self.events.emit_help_status_updated(help_id, status, new, agent_id=f"staff-{self.random.randrange(1, 6)}")

    def _command(self):
        kiosk, number = self.random.choice(list(self.states))
        now = wire.js_timestamp()
        success = self.random.random() > 0.05
        result = {"success": success, "timestamp": now, "execution_time_ms": self.random.randrange(40, 900)}
        if not success:
            result["error"] = "locker did not answer"
        return self.events.emit_command_applied(
            {"id": f"cmd-{next(self.command_ids)}", "type": self.random.choice(("open", "close", "reset", "buzzer")),
             "issued_by": f"staff-{self.random.randrange(1, 6)}", "issued_at": now,
             "lockerId": f"{kiosk}:{number}", "kioskId": kiosk},
            result,
        )

    def _status(self):
        score = self.random.randrange(55, 101)
        status = "online" if score > 80 else "degraded"
        return self.events.emit_system_status(
            self.random.choice(("kiosk", "gateway", "database")), status, score,
            metrics={"cpu_usage": round(self.random.uniform(5, 95), 1), "memory_usage": round(self.random.uniform(20, 90), 1)},
        )


class DemoService(MultiService):
    """The gateway on a throw-away SQLite file (or on the Redis named), an admin session
    made for the demo and printed once on the terminal (not logged), the event generator
    and, unless `clients` is false, the simulated clients (`self.clients`, a DemoClients,
    once the gateway listens)."""

    def __init__(self, config, interval: float = 0.7, stream=None, inherited_fd: int | None = None,
                 directory: str | None = None, clients: bool = True):
        super().__init__()
        from eformws.runtime.service import EformService

        self.directory = directory  # the throw-away stores' directory, removed on stop
        self.gateway = EformService(config, inherited_fd=inherited_fd)
        self.gateway.setServiceParent(self)
        self.generator = DemoGenerator(self.gateway.events, interval)
        self.session_id = None  # the admin session's, once made in the gateway's own store
        self.stream = stream or sys.stdout
        self.simulate = clients
        self.clients = None

    def startService(self):
        super().startService()
        self.gateway.ready.addCallback(self._when_listening)

    @inlineCallbacks
    def _when_listening(self, result):
        """In the gateway's `ready` chain (whose result it passes on): the admin session,
        made in the gateway's own store (SQLite, or Redis with --redis), printed; then the
        generator and the simulated clients."""
        if not self.running:
            return result
        try:
            session = yield self.gateway.sessions.create(ADMIN, "admin", None, SESSION_TTL)
        except Exception as e:
            log.error("demo: its admin session could not be made ({error}); no events are generated",
                      error=f"{type(e).__name__}: {e}")
            return result
        self.session_id = session.id
        if self.running:
            self._announce()
        return result

    @inlineCallbacks
    def stopService(self):
        if self.clients is not None and self.clients.running:
            yield self.clients.stopService()  # the clients leave first, as real ones would
        yield super().stopService()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _announce(self):
        host = "localhost"
        port = self.gateway.port
        self.stream.write(
            "\n"
            f"  eformws demo: admin session {self.session_id}\n"
            f"  console:      http://{host}:{port}/console  (log in with the session id above)\n"
            f"  events:       ws://{host}:{port}/ws/events?sessionId=<the session id>\n"
            "  (a throw-away demo: the session and its events live in a temporary directory)\n\n"
        )
        self.stream.flush()
        self.generator.setServiceParent(self)
        if self.simulate:
            self._start_clients()

    def _start_clients(self):
        if self.gateway.tls is not None:
            log.info("demo: no simulated clients (they connect over plain ws:// and the gateway serves TLS)")
            return
        base_url = f"http://{client_host(self.gateway.config.get('server', 'host'))}:{self.gateway.port}"
        self.clients = DemoClients(self.gateway.sessions, base_url, KIOSKS, reactor=self.gateway.reactor)
        self.clients.setServiceParent(self)
        d = self.clients.when_connected()
        d.addCallbacks(lambda _: log.info(
            "demo clients connected: {kiosks} kiosks on /ws/lockers (each in its kiosk's room), {staff} staff on "
            "/ws/help, {wamp} WAMP session on /wamp", kiosks=len(self.clients.kiosks), staff=len(self.clients.staff),
            wamp=1 if self.clients.wamp is not None else 0,
        ), lambda _: None)  # stopped before they all connected: nothing to say


def demo_config(options_overrides: dict, config_path: str | None, directory: str):
    """The configuration of a demo: the given one, with its stores in `directory`."""
    from eformws.runtime.config import load_config

    overrides = dict(options_overrides)
    overrides.setdefault(("sessions", "path"), os.path.join(directory, "demo.db"))
    overrides.setdefault(("events", "path"), os.path.join(directory, "demo.db"))
    return load_config(config_path, overrides)
