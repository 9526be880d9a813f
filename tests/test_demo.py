"""The demo as a newcomer runs it: `twistd -n eformws --demo` prints an admin session once,
generates realistic events that a client of /ws/events sees arriving, and runs simulated
kiosk, staff and WAMP clients, so the console shows what the README's screenshot shows."""

from __future__ import annotations

import io

import pytest
import pytest_twisted
import treq
from processes import Gateway, _reactor
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from eformws.events import ValidationError
from eformws.runtime.demo import KIOSKS, DemoGenerator, DemoService, demo_config
from eformws.runtime.demo_clients import WAMP_REFUSALS


@pytest.fixture(autouse=True)
def demo_tmpdir(tmp_path, monkeypatch):
    """The demos' temporary directories go under the test's own: a demo process the test
    leaves to the `spawn` fixture is killed, and cannot remove its directory itself."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    return temporary


@pytest.mark.slow  # ~4 s: a demo twistd generating events
@pytest_twisted.ensureDeferred
async def test_demo_prints_an_admin_session_and_generates_events_a_client_receives(tmp_path, spawn):
    process = spawn.raw(["--demo", "--port", "0", "--host", "127.0.0.1"], tmp_path)
    found = await process.line(r"eformws demo: admin session (\S+)\n  console:\s+http://localhost:(\d+)/console")
    session_id, port = found.group(1), int(found.group(2))
    gateway = Gateway(process, port)
    client = await gateway.join("/ws/events", session_id)
    types = {(await client.recv(timeout=10))["type"] for _ in range(6)}
    assert types <= {"locker_state_changed", "help_requested", "help_status_updated", "command_applied", "system_status"}
    assert process.out.decode().count(session_id) == 1  # printed once, never logged
    await client.close()


class Recorder:
    """Stands in for WebSocketEvents: validates nothing, records the calls."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        from twisted.internet.defer import succeed

        def record(*args, **kwargs):
            self.calls.append(name)
            return succeed(None)

        return record


def test_generator_produces_every_event_type_over_time():
    recorder = Recorder()
    generator = DemoGenerator(recorder, seed=7)
    for _ in range(400):
        generator.emit_one()
    assert set(recorder.calls) == {
        "emit_locker_state_changed", "emit_help_requested", "emit_help_status_updated",
        "emit_command_applied", "emit_system_status",
    }


async def refusals(events, generator, count: int) -> list:
    """The failures of `count` events from `generator` (the generator itself only logs
    them: its errback would hide them from a test that awaited what it emitted)."""
    outcomes, original = [], events.emit

    def emit(event_type, data, idempotency_key=None):
        d = original(event_type, data, idempotency_key)
        d.addBoth(lambda result: outcomes.append(result) or result)  # before the generator's errback
        emitted.append(d)
        return d

    emitted = []
    events.emit = emit
    try:
        for _ in range(count):
            generator.emit_one()
        for d in emitted:
            await d
    finally:
        del events.emit
    assert len(outcomes) == count
    return [outcome for outcome in outcomes if isinstance(outcome, Failure)]


@pytest_twisted.ensureDeferred
async def test_every_generated_event_passes_validation(server):
    assert await refusals(server.service.events, DemoGenerator(server.service.events, seed=11), 300) == []


@pytest_twisted.ensureDeferred
async def test_a_generator_making_invalid_events_is_caught_by_that_check(server):
    class Broken(DemoGenerator):
        def _status(self):
            return self.events.emit("system_status", {"component": "kiosk", "status": "sleepy", "health_score": 5})

    refused = await refusals(server.service.events, Broken(server.service.events, seed=11), 300)
    assert refused and all(failure.check(ValidationError) for failure in refused)


@pytest_twisted.ensureDeferred
async def test_twistd_demo_listens_on_this_machine_only_unless_host_says_otherwise(tmp_path, spawn):
    process = spawn.raw(["--demo", "--port", "0"], tmp_path)
    found = await process.line(r"eformws listening on (\S+):(\d+)")
    assert found.group(1) == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_the_demo_removes_its_temporary_directory_when_it_stops(tmp_path, spawn, demo_tmpdir):
    process = spawn.raw(["--demo", "--port", "0"], tmp_path)
    await process.line(r"eformws demo: admin session")
    assert [p.name[:13] for p in demo_tmpdir.iterdir()] == ["eformws-demo-"]
    process.signal("TERM")
    assert (await process.ended())[0] == 0
    assert list(demo_tmpdir.iterdir()) == []


# -- the simulated clients ---------------------------------------------------------------

CONNECTED = r"demo clients connected: 3 kiosks on /ws/lockers"


def assert_shows_the_simulated_clients(status: dict) -> None:
    """What the README's screenshot shows (plus the WAMP session): a kiosk per demo kiosk on
    /ws/lockers, each alone in its kiosk's room, two staff in /ws/help, one WAMP session."""
    assert status["namespaces"]["/ws/lockers"] == len(KIOSKS), status
    assert status["namespaces"]["/ws/help"] == 2, status
    assert status["endpoints"] == {"/wamp": 1}, status
    assert status["rooms"]["/ws/lockers"] == {"locker_updates": len(KIOSKS), **{kiosk: 1 for kiosk in KIOSKS}}, status
    assert status["rooms"]["/ws/help"] == {"help_requests": 2}, status


async def status_of(port: int, session_id: str) -> dict:
    """GET /api/websocket/status with the admin session (the status needs none, as built)."""
    response = await treq.get(f"http://127.0.0.1:{port}/api/websocket/status",
                              headers={"Authorization": f"Bearer {session_id}"}, persistent=False)
    assert response.code == 200
    return await response.json()


@pytest_twisted.ensureDeferred
async def test_the_demo_runs_simulated_kiosks_staff_and_a_wamp_client_and_stops_cleanly(tmp_path, spawn, demo_tmpdir):
    process = spawn.raw(["--demo", "--port", "0"], tmp_path)
    found = await process.line(r"eformws demo: admin session (\S+)\n  console:\s+http://localhost:(\d+)/console")
    session_id, port = found.group(1), int(found.group(2))
    await process.line(CONNECTED)  # logged once every simulated client is connected and in its rooms
    status = await status_of(port, session_id)
    assert_shows_the_simulated_clients(status)
    assert status["namespaces"]["/ws/events"] == 0  # the console's place
    process.signal("TERM")
    assert (await process.ended()) == (0, None)
    assert list(demo_tmpdir.iterdir()) == []
    assert "Traceback" not in process.log and "Unhandled" not in process.log, process.log
    assert "demo client " not in process.log  # none was refused or cut off, not even by the shutdown
    assert process.out.decode().count(session_id) == 1


class LogLines:
    """Every log event while it is attached, formatted; `next(text)` fires on the next line
    containing `text`."""

    def __init__(self):
        self.events: list[dict] = []
        self._waiting: list[tuple[str, Deferred]] = []
        globalLogPublisher.addObserver(self)

    def __call__(self, event):
        self.events.append(event)
        text = formatEvent(event)
        for entry in list(self._waiting):
            if entry[0] in text:
                self._waiting.remove(entry)
                entry[1].callback(event)

    def next(self, text: str) -> Deferred:
        d = Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(10, _reactor())

    @property
    def text(self) -> str:
        return "\n".join(formatEvent(event) + " " + repr(event) for event in self.events)

    def close(self):
        globalLogPublisher.removeObserver(self)


@pytest.fixture
def log_lines():
    lines = LogLines()
    yield lines
    lines.close()


@pytest.fixture
def demo(tmp_path):
    """`await demo(**overrides)`: a DemoService in this process (port 0), started, listening;
    stopped after the test if it still runs."""
    started = []

    async def start(clients: bool = True, **overrides):
        directory = tmp_path / "demo"
        directory.mkdir()
        values = {("server", "port"): 0, ("server", "host"): "127.0.0.1"}
        values.update({tuple(key.split(".")): value for key, value in overrides.items()})
        config = demo_config(values, None, str(directory))
        service = DemoService(config, interval=0.2, stream=io.StringIO(), directory=str(directory),
                              clients=clients)
        service.startService()
        started.append(service)
        await service.gateway.ready
        return service

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(service.stopService())


def simulated_session_ids(service) -> list[str]:
    return [client._session_id for client in service.clients]


@pytest_twisted.ensureDeferred
async def test_simulated_clients_are_counted_and_their_sessions_are_never_printed_or_logged(demo, log_lines):
    before = set(_reactor().getDelayedCalls())
    service = await demo()
    await service.clients.when_connected()
    assert_shows_the_simulated_clients(await status_of(service.gateway.port, service.session_id))
    status = await service.clients.wamp.when_status()  # eform.status over WAMP (on joining, then every 15 s)
    assert set(status) >= {"namespaces", "endpoints", "rooms"}
    event = await service.clients.wamp.when_event()  # subscribed to eform.events.system_events
    assert "seq" in event
    sessions = [await service.gateway.sessions.lookup(sid) for sid in simulated_session_ids(service)]
    assert [(s.user_id, s.role, s.kiosk_id) for s in sessions] == [
        *((f"demo-{kiosk}", "kiosk", kiosk) for kiosk in KIOSKS),
        ("demo-staff-1", "staff", None), ("demo-staff-2", "staff", None), ("demo-wamp", "staff", None),
    ]
    await service.stopService()
    assert service.gateway.hub.connection_count() == 0
    assert [call for call in _reactor().getDelayedCalls() if call not in before] == []
    shown = service.stream.getvalue() + log_lines.text
    assert shown.count(service.session_id) == 1  # the admin's, printed once
    assert not [sid for sid in simulated_session_ids(service) if sid in shown]
    assert [e for e in log_lines.events if e.get("log_namespace") == "eformws.demo" and "demo client " in formatEvent(e)] == []


@pytest_twisted.ensureDeferred
async def test_a_refused_simulated_client_logs_one_line_and_comes_back_with_a_new_session(demo, log_lines):
    service = await demo(**{"sessions.recheck_interval": 0.1})
    await service.clients.when_connected()
    kiosk, wamp = service.clients.getServiceNamed("kiosk-2"), service.clients.wamp
    old = {client.name: client._session_id for client in (kiosk, wamp)}
    lines = [log_lines.next("demo client kiosk-2: refused"), log_lines.next("demo client wamp: refused")]
    for client in (kiosk, wamp):
        await service.gateway.sessions.revoke(client._session_id)
    kiosk_line, wamp_line = [await line for line in lines]
    assert (kiosk_line["client"], kiosk_line["what"]) == ("kiosk-2", "refused")
    assert "refused the session" in kiosk_line["reason"]  # closed 1008, or refused on reconnecting
    assert (wamp_line["client"], wamp_line["what"]) == ("wamp", "refused")
    assert wamp_line["reason"].split(":")[0] in WAMP_REFUSALS  # GOODBYE close_realm, or ABORT not_authorized
    await kiosk.when_connected()
    await wamp.when_connected()
    assert_shows_the_simulated_clients(await status_of(service.gateway.port, service.session_id))
    assert kiosk._session_id != old["kiosk-2"] and wamp._session_id != old["wamp"]
    assert not [sid for sid in [*old.values(), *simulated_session_ids(service)] if sid in log_lines.text]


@pytest_twisted.ensureDeferred
async def test_a_demo_without_simulated_clients_has_none(demo):
    service = await demo(clients=False)
    assert service.clients is None
    assert service.gateway.hub.connection_count() == 0


@pytest_twisted.ensureDeferred
async def test_with_redis_the_printed_admin_session_is_in_redis_and_logs_in(demo, redis_url, redis_prefix):
    service = await demo(clients=False, **{"redis.url": redis_url, "redis.prefix": redis_prefix})
    response = await treq.get(f"http://127.0.0.1:{service.gateway.port}/api/websocket/health",
                              headers={"Authorization": f"Bearer {service.session_id}"}, persistent=False)
    assert response.code == 200  # the gateway found it: it is in the store the gateway uses
    await response.content()
    assert await service.gateway.sessions.lookup(service.session_id) is not None
    assert service.stream.getvalue().count(service.session_id) == 1
