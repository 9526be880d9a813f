"""The demo as a newcomer runs it: `twistd -n eformws --demo` prints an admin session once
and generates realistic events that a client of /ws/events sees arriving."""

from __future__ import annotations

import pytest_twisted
from processes import Gateway

from eformws.demo import DemoGenerator


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


@pytest_twisted.ensureDeferred
async def test_every_generated_event_passes_validation(server):
    generator = DemoGenerator(server.service.events, seed=11)
    emitted = []
    original = server.service.events.emit

    def emit(event_type, data, idempotency_key=None):
        d = original(event_type, data, idempotency_key)
        emitted.append(d)
        return d

    server.service.events.emit = emit
    for _ in range(300):
        generator.emit_one()
    for d in emitted:
        await d  # a ValidationError would fail here
    assert len(emitted) == 300


@pytest_twisted.ensureDeferred
async def test_twistd_demo_listens_on_this_machine_only_unless_host_says_otherwise(tmp_path, spawn):
    process = spawn.raw(["--demo", "--port", "0"], tmp_path)
    found = await process.line(r"eformws listening on (\S+):(\d+)")
    assert found.group(1) == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_the_demo_removes_its_temporary_directory_when_it_stops(tmp_path, spawn, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    process = spawn.raw(["--demo", "--port", "0"], tmp_path)
    await process.line(r"eformws demo: admin session")
    assert [p.name[:13] for p in temporary.iterdir()] == ["eformws-demo-"]
    process.signal("TERM")
    assert (await process.ended())[0] == 0
    assert list(temporary.iterdir()) == []
