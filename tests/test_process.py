"""The gateway as operators run it: real `twistd -n eformws` processes and the `eformws`
command (PROTOCOL.md section 3 "Shutdown", section 2 on logs, section 7 /healthz).

Processes are spawned through the reactor (never blocking it); see tests/processes.py."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
import pytest_twisted
import treq
from conftest import REFUSED, refused
from processes import (
    SESSION_ID,
    TIMEOUT,
    TWISTD,
    create_session,
    eformws,
    run,
    write_config,
)

from eformws.backends.sqlite import connect
from eformws.sessions.sqlite import lookup_session


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
async def test_twistd_eformws_help_leaves_out_internal_options_and_states_the_precedence(tmp_path):
    out, err, code = await run(TWISTD, "eformws", "--help", cwd=tmp_path)
    assert code == 0, err
    assert "--inherit-fd" not in out and "--worker-index" not in out and "(internal)" not in out
    assert "Options override EFORMWS_<SECTION>_<KEY> variables, which override the\nconfiguration file" in out
    assert re.search(r"-w, --workers=\s+Worker processes", out), out


@pytest_twisted.ensureDeferred
async def test_twistd_without_config_starts_creates_db_in_working_dir_and_serves_healthz(tmp_path, spawn):
    assert not (tmp_path / "eformws.db").exists()
    gateway = await spawn(["--port", "0", "--host", "127.0.0.1"], tmp_path)
    response = await treq.get(gateway.http("/healthz"), persistent=False)
    assert response.code == 200
    body = await response.json()
    assert body["status"] == "ok"  # the stores answered: the file is open (SQLite opens it off the reactor)
    assert (tmp_path / "eformws.db").is_file()
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
    assert err.startswith(f"eformws: warning: created a new session database at {tmp_path / 'sessions.db'}")
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
    # Without the few seconds' memory of lookups (sessions.lookup_cache), which would let a
    # handshake in until the recheck closes it (tests/test_session_cache.py).
    config = write_config(tmp_path, sessions="lookup_cache = 0\n")
    session_id = await create_session(tmp_path, config)
    gateway = await spawn(["--config", str(config)], tmp_path)
    client = await gateway.join("/ws/lockers", session_id)  # accepted before the revoke
    await client.close()

    out, err, code = await eformws("sessions", "revoke", session_id, "--config", str(config), cwd=tmp_path)
    assert code == 0, err

    client = await gateway.connect(f"/ws/lockers?sessionId={session_id}")
    assert await refused(client) == (REFUSED, "Authentication failed")
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
    assert await refused(stranger) == (REFUSED, "Authentication failed")
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


@pytest_twisted.ensureDeferred
async def test_json_logger_writes_one_json_object_per_line_with_fields(tmp_path):
    from processes import Process, environment
    from twisted.internet import reactor

    config = write_config(tmp_path)
    process = Process()
    argv = [TWISTD, "--logger=eformws.logs.json_observer", "-n", "eformws", "--config", str(config)]
    reactor.spawnProcess(process, TWISTD, argv, env=environment(), path=str(tmp_path))
    found = await process.line(r'"text":"eformws listening on 127\.0\.0\.1:(\d+)')
    response = await treq.get(f"http://127.0.0.1:{found.group(1)}/healthz", persistent=False)
    assert response.code == 200  # the reactor runs: its signal handlers are in place
    process.signal("TERM")
    assert await process.ended() == (0, None), process.log
    records = [json.loads(line) for line in process.out.decode().splitlines() if line.strip()]
    listening = next(r for r in records if r["text"].startswith("eformws listening on"))
    assert listening["level"] == "info" and listening["host"] == "127.0.0.1" and isinstance(listening["port"], int)
    assert all({"time", "level", "namespace", "text"} <= set(r) for r in records)


@pytest.fixture
def taken_port():
    """A loopback port something else listens on."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


IN_USE = "eformws: cannot listen on 127.0.0.1:{port}: address already in use (another process listens there: stop it, or choose --port)\n"


@pytest.mark.parametrize("extra", [[], ["--workers", "2", "--redis", "redis://127.0.0.1:1/0"], ["--demo"]],
                         ids=["one-process", "workers", "demo"])
@pytest_twisted.ensureDeferred
async def test_a_port_in_use_ends_twistd_with_one_line_and_exit_1(tmp_path, taken_port, extra):
    out, err, code = await run(TWISTD, "-n", "--pidfile=", "eformws", "--host", "127.0.0.1", "--port", str(taken_port),
                               *extra, cwd=tmp_path)
    assert (err, code) == (IN_USE.format(port=taken_port), 1)


@pytest_twisted.ensureDeferred
async def test_eformws_demo_on_a_port_in_use_says_so_in_one_line_and_exits_1(tmp_path, taken_port):
    out, err, code = await eformws("demo", "--port", str(taken_port), cwd=tmp_path)
    assert (err, code) == (IN_USE.format(port=taken_port), 1)
    assert "admin session" not in out


@pytest_twisted.ensureDeferred
async def test_cli_sessions_create_with_sessions_db_makes_a_session_twistd_with_that_file_accepts(tmp_path, spawn):
    database = tmp_path / "elsewhere.db"
    out, err, code = await eformws("sessions", "create", "--user", "u", "--role", "staff",
                                   "--sessions-db", str(database), cwd=tmp_path)
    assert code == 0, err
    gateway = await spawn(["--port", "0", "--host", "127.0.0.1", "--sessions-db", str(database)], tmp_path)
    client = await gateway.join("/ws/lockers", out.strip())
    await client.close()


@pytest_twisted.ensureDeferred
async def test_cli_sessions_list_without_a_database_says_where_it_looked_and_creates_none(tmp_path):
    out, err, code = await eformws("sessions", "list", "--sessions-db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert err.startswith(f"eformws: no session database at {tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()


@pytest_twisted.ensureDeferred
async def test_cli_sessions_revoke_takes_the_store_options_too(tmp_path):
    database = tmp_path / "s.db"
    out, _, _ = await eformws("sessions", "create", "--user", "u", "--role", "staff", "--sessions-db", str(database),
                              cwd=tmp_path)
    _, err, code = await eformws("sessions", "revoke", "--sessions-db", str(database), out.strip(), cwd=tmp_path)
    assert code == 0, err


@pytest_twisted.ensureDeferred
async def test_the_tac_example_runs_the_gateway_and_your_own_service_in_one_process(tmp_path):
    from processes import Gateway, Process, _reactor, environment

    config = write_config(tmp_path)  # loopback, port 0
    example = Path(__file__).resolve().parent.parent / "etc" / "examples" / "with-your-service.tac"
    process = Process()
    env = {**environment(), "GATEWAY_CONFIG": str(config), "HEARTBEAT_SECONDS": "0.2"}
    _reactor().spawnProcess(process, TWISTD, [TWISTD, "-n", "--pidfile=", "-y", str(example)], env=env,
                            path=str(tmp_path))
    try:
        found = await process.line(r"eformws listening on \S+:(\d+)")
        gateway = Gateway(process, int(found.group(1)))
        session_id = await create_session(tmp_path, config, "ops", "staff")
        client = await gateway.join("/ws/events", session_id)
        while (event := await client.recv(timeout=10))["type"] != "system_status":
            pass
        assert event["data"]["message"] == "heartbeat from my service"
        await process.line(r"heartbeat stored as seq \d+")
        await client.close()
    finally:
        process.signal("TERM")
        await process.ended()
