"""The `eformws` command's gateway subcommands as an operator runs them (status, tail,
check-config, emit, broadcast, --help): real processes against real gateways."""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
import treq
from processes import (
    EFORMWS,
    TIMEOUT,
    TWISTD,
    Process,
    create_session,
    environment,
    write_config,
)
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

TOKEN = "cli-test-token"
LOCKERS = "/ws/lockers"


# -- harness -----------------------------------------------------------------------------


def command(executable: str, *args: str, cwd, env: dict | None = None) -> defer.Deferred:
    """Run `executable ARGS` to its end (EFORMWS_* only as `env` gives them); fires with
    (stdout, stderr, exit code)."""
    d = getProcessOutputAndValue(executable, args, env={**environment(), **(env or {})}, path=str(cwd), reactor=reactor)
    d.addTimeout(TIMEOUT, reactor)
    d.addCallback(lambda r: (r[0].decode("utf-8", "replace"), r[1].decode("utf-8", "replace"), r[2]))
    return d


def cli(*args: str, cwd, env: dict | None = None) -> defer.Deferred:
    """`eformws ARGS`, as `command` runs it."""
    return command(EFORMWS, *args, cwd=cwd, env=env)


def twistd(*args: str, cwd, env: dict | None = None) -> defer.Deferred:
    """`twistd -n --pidfile= eformws ARGS`, as `command` runs it."""
    return command(TWISTD, "-n", "--pidfile=", "eformws", *args, cwd=cwd, env=env)


def one_line_error(err: str) -> bool:
    return len(err.splitlines()) == 1 and err.endswith("\n") and err.startswith("eformws") and "Traceback" not in err


class Tail(Process):
    """A running `eformws tail`: its stdout as JSON lines, waits on stderr notices too."""

    def __init__(self):
        super().__init__()
        self._count_waiters: list[tuple[int, defer.Deferred]] = []
        self._err_waiters: list[tuple[re.Pattern, int, defer.Deferred]] = []

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out.decode("utf-8").splitlines()]

    def outReceived(self, data):
        super().outReceived(data)
        lines = self.out.count(b"\n")
        for entry in list(self._count_waiters):
            if lines >= entry[0]:
                self._count_waiters.remove(entry)
                entry[1].callback(self.events[: entry[0]])

    def printed(self, n: int) -> defer.Deferred:
        """Fires with the first `n` events once that many lines are on stdout."""
        d = defer.Deferred()
        self._count_waiters.append((n, d))
        self.outReceived(b"")
        d.addTimeout(TIMEOUT, reactor, onTimeoutCancel=lambda *_: self._timed_out(f"{n} lines"))
        return d

    @property
    def mark_err(self) -> int:
        return len(self.err)

    def errReceived(self, data):
        super().errReceived(data)
        for entry in list(self._err_waiters):
            pattern, after, d = entry
            if pattern.search(self.err[after:].decode("utf-8", "replace")):
                self._err_waiters.remove(entry)
                d.callback(None)

    def said(self, pattern: str, after: int = 0) -> defer.Deferred:
        """Fires once `pattern` is on stderr (past byte `after`)."""
        d = defer.Deferred()
        self._err_waiters.append((re.compile(pattern), after, d))
        self.errReceived(b"")
        d.addTimeout(TIMEOUT, reactor, onTimeoutCancel=lambda *_: self._timed_out(pattern))
        return d

    def _timed_out(self, what):
        raise AssertionError(f"tail never showed {what!r}:\n{self.log}")


@pytest.fixture
def tails():
    """`tails(args, cwd, env)` starts `eformws tail ARGS`; still running at the end: killed."""
    started: list[Tail] = []

    def start(args, cwd, env=None) -> Tail:
        process = Tail()
        reactor.spawnProcess(process, EFORMWS, [EFORMWS, "tail", *args], env={**environment(), **(env or {})}, path=str(cwd))
        started.append(process)
        return process

    yield start
    for process in started:
        if process._end is None:
            process.signal("KILL")
            pytest_twisted.blockon(process.ended())


def emit(server, n: int, kiosk="kiosk-1"):
    return server.service.events.emit_locker_state_changed(f"{kiosk}:{n}", "closed", "open", kiosk)


async def emit_over_http(gateway, n: int) -> dict:
    response = await treq.post(
        gateway.http("/api/websocket/events"),
        json={"type": "locker_state_changed",
              "data": {"lockerId": f"kiosk-1:{n}", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
        persistent=False,
    )
    assert response.code == 201
    return await response.json()


# -- help and usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["sessions"], ["sessions", "create"], ["sessions", "list"], ["sessions", "revoke"], ["emit"], ["broadcast"],
     ["status"], ["tail"], ["check-config"]],
    ids=lambda command: " ".join(command) or "eformws",
)
@pytest_twisted.ensureDeferred
async def test_every_command_has_help(tmp_path, command):
    out, err, code = await cli(*command, "--help", cwd=tmp_path)
    assert code == 0, err
    assert out.startswith("usage: " + " ".join(["eformws", *command])), out
    if not command:
        for name in ("sessions", "emit", "broadcast", "status", "tail", "check-config"):
            assert re.search(rf"^\s+{name}\s", out, re.M), name


@pytest_twisted.ensureDeferred
async def test_a_usage_error_is_one_line_naming_the_problem_and_exit_2(tmp_path):
    out, err, code = await cli("tail", cwd=tmp_path)
    assert (out, code) == ("", 2)
    assert one_line_error(err), err
    assert "NS" in err and "eformws tail --help" in err


@pytest_twisted.ensureDeferred
async def test_sessions_revoke_reads_an_id_that_begins_with_a_dash_as_the_id(tmp_path):
    config = write_config(tmp_path)
    await create_session(tmp_path, config)
    for args in (["-" + "a" * 42, "--config", str(config)], ["--config", str(config), "-" + "b" * 42]):
        out, err, code = await cli("sessions", "revoke", *args, cwd=tmp_path)
        assert (out, err, code) == ("", "eformws: no live session matches that id or reference\n", 1)


@pytest.mark.parametrize("url", ["127.0.0.1:3918", "ftp://x", "ws://127.0.0.1:3000"], ids=["no scheme", "ftp", "ws"])
@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_http_or_https_is_a_usage_error_naming_it(tmp_path, url):
    out, err, code = await cli("status", "--url", url, cwd=tmp_path)
    assert (out, err, code) == ("", f"eformws: --url must start with http:// or https://, got {url!r}\n", 2)


@pytest_twisted.ensureDeferred
async def test_a_url_without_a_host_is_a_usage_error_naming_it(tmp_path):
    out, err, code = await cli("status", "--url", "http://", cwd=tmp_path)
    assert (out, code) == ("", 2)
    assert err == "eformws: --url must name a host after http:// (like http://127.0.0.1:3000), got 'http://'\n"


@pytest_twisted.ensureDeferred
async def test_an_eformws_url_that_is_not_http_or_https_is_a_usage_error_naming_the_variable(tmp_path):
    out, err, code = await cli("emit", "system_status", "--data", "{}", cwd=tmp_path, env={"EFORMWS_URL": "ftp://x"})
    assert (out, err, code) == ("", "eformws: EFORMWS_URL must start with http:// or https://, got 'ftp://x'\n", 2)


@pytest_twisted.ensureDeferred
async def test_emit_data_that_is_not_json_is_a_usage_error(tmp_path):
    out, err, code = await cli("emit", "system_status", "--data", "notjson", "--url", "http://127.0.0.1:1", cwd=tmp_path)
    assert (out, code) == ("", 2)
    assert one_line_error(err), err
    assert err.startswith("eformws: --data is not valid JSON (Expecting value at character 0)"), err


@pytest.mark.parametrize("data,kind", [("5", "a number"), ("[1]", "an array"), ('"text"', "a string")])
@pytest_twisted.ensureDeferred
async def test_broadcast_data_that_is_not_a_json_object_is_a_usage_error(tmp_path, data, kind):
    out, err, code = await cli("broadcast", LOCKERS, "maintenance", "--data", data, "--url", "http://127.0.0.1:1",
                               cwd=tmp_path)
    assert (out, err, code) == ("", f"eformws: --data must be a JSON object ({{...}}), got {kind}: {data!r}\n", 2)


@pytest_twisted.ensureDeferred
async def test_sessions_list_without_a_database_names_every_way_to_point_at_the_servers_store(tmp_path):
    out, err, code = await cli("sessions", "list", "--sessions-db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert err == (f"eformws: no session database at {tmp_path / 'none.db'} (the server's: --config FILE, "
                   "--sessions-db FILE or --redis URL, as given to twistd eformws)\n")


# -- status ------------------------------------------------------------------------------------


async def busy_server(start_server):
    """A server with 2 lockers clients (one in room kiosk-1), 1 help client, a delivery made."""
    server = await start_server()
    session_id = await server.session()
    lockers = [await server.join(LOCKERS, session_id) for _ in range(2)]
    await server.join("/ws/help", session_id)
    await lockers[0].send({"type": "join_room", "room": "kiosk-1"})
    assert (await lockers[0].recv())["type"] == "room_joined"
    await server.service.events.broadcast(LOCKERS, "notice", {})
    await lockers[0].recv()
    return server


@pytest_twisted.ensureDeferred
async def test_status_prints_connections_rooms_and_latency_as_tables(tmp_path, start_server):
    server = await busy_server(start_server)
    out, err, code = await cli("status", "--url", server.http(""), cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^connections\s+3$", out, re.M), out
    assert re.search(r"^PATH\s+KIND\s+CONNECTIONS$", out, re.M), out
    assert re.search(r"^/ws/lockers\s+namespace\s+2$", out, re.M), out
    assert re.search(r"^/ws/help\s+namespace\s+1$", out, re.M), out
    assert re.search(r"^/ws/events\s+namespace\s+0$", out, re.M), out
    assert re.search(r"^/wamp\s+endpoint\s+0$", out, re.M), out
    assert re.search(r"^/ws/lockers\s+locker_updates\s+2$", out, re.M), out
    assert re.search(r"^/ws/lockers\s+kiosk-1\s+1$", out, re.M), out
    assert re.search(r"^latency\s+median [\d.]+ ms\s+p95 [\d.]+ ms\s+p99 [\d.]+ ms", out, re.M), out
    assert "NODE" not in out  # one process without Redis: no nodes


@pytest_twisted.ensureDeferred
async def test_status_json_is_the_status_object_on_one_line(tmp_path, start_server):
    server = await busy_server(start_server)
    out, err, code = await cli("status", "--json", "--url", server.http(""), cwd=tmp_path)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    status = json.loads(out)
    response = await treq.get(server.http("/api/websocket/status"), persistent=False)
    expected = await response.json()
    assert list(status) == list(expected)
    assert status["namespaces"] == expected["namespaces"] == {LOCKERS: 2, "/ws/help": 1, "/ws/events": 0}
    assert status["rooms"][LOCKERS] == {"locker_updates": 2, "kiosk-1": 1}
    assert set(status["latency_metrics"]) >= {"median", "p95", "p99"}


@pytest_twisted.ensureDeferred
async def test_status_lists_each_node_of_a_deployment_with_redis(tmp_path, start_server, redis_url, redis_prefix):
    server = await start_server({"redis.url": redis_url, "redis.prefix": redis_prefix})
    for part in (server.service.sessions, server.service.nodes):
        await part.connection.when_connected()
    await server.join(LOCKERS, await server.session())
    out, err, code = await cli("status", "--url", server.http(""), cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^NODE\s+CONNECTIONS\s+LAST SEEN$", out, re.M), out
    assert re.search(rf"^{re.escape(server.service.node_id)}\s+\d+\s+\d{{4}}-", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_status_of_a_gateway_that_is_not_there_is_one_line_and_exit_1(tmp_path):
    from processes import free_port

    out, err, code = await cli("status", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert one_line_error(err), err
    assert "cannot reach http://127.0.0.1:" in err


# -- tail ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tail_prints_each_event_as_one_json_line_and_ctrl_c_ends_it_with_0(tmp_path, start_server, tails):
    server = await start_server()
    session_id = await server.session()
    tail = tails([LOCKERS, "--url", server.http(""), "--no-replay"], tmp_path, env={"EFORMWS_SESSION": session_id})
    await tail.said(r"tailing /ws/lockers \(rooms: locker_updates\)")
    stored = [await emit(server, n) for n in range(5)]
    await server.service.events.broadcast(LOCKERS, "maintenance", {"minutes": 5})
    printed = await tail.printed(6)
    assert printed[:5] == stored
    assert printed[5]["type"] == "maintenance" and printed[5]["data"] == {"minutes": 5}
    assert all(line == json.dumps(e, separators=(",", ":"), ensure_ascii=False)
               for line, e in zip(tail.out.decode().splitlines(), printed))
    tail.signal("INT")
    assert await tail.ended() == (0, None)
    assert session_id not in tail.log and "Traceback" not in tail.log


@pytest_twisted.ensureDeferred
async def test_tail_since_a_seq_and_its_epoch_prints_what_came_after_it_only(tmp_path, start_server, tails):
    server = await start_server()
    session_id = await server.session()
    stored = [await emit(server, n) for n in range(4)]
    last = stored[1]
    tail = tails([LOCKERS, "--url", server.http(""), "--since", last["seq"], "--epoch", last["epoch"]], tmp_path,
                 env={"EFORMWS_SESSION": session_id})
    assert await tail.printed(2) == stored[2:]
    await tail.said(r"resumed 2 events since the last one shown")
    tail.signal("INT")
    assert await tail.ended() == (0, None)


@pytest_twisted.ensureDeferred
async def test_tail_since_a_seq_of_another_epoch_warns_that_events_were_missed(tmp_path, start_server, tails):
    server = await start_server()
    session_id = await server.session()
    stored = [await emit(server, n) for n in range(2)]
    tail = tails([LOCKERS, "--url", server.http(""), "--since", "1", "--epoch", "another-log"], tmp_path,
                 env={"EFORMWS_SESSION": session_id})
    assert await tail.printed(2) == stored  # what the log holds, instead
    await tail.said(r"EVENTS WERE MISSED")
    tail.signal("INT")
    assert await tail.ended() == (0, None)


@pytest_twisted.ensureDeferred
async def test_tail_epoch_without_since_is_a_usage_error(tmp_path):
    out, err, code = await cli("tail", LOCKERS, "--epoch", "abc", cwd=tmp_path)
    assert (out, err, code) == ("", "eformws: --epoch needs --since (it is the epoch of that seq)\n", 2)


@pytest_twisted.ensureDeferred
async def test_tail_url_without_a_scheme_is_a_usage_error_naming_the_websocket_schemes_too(tmp_path):
    out, err, code = await cli("tail", LOCKERS, "--url", "127.0.0.1:3918", cwd=tmp_path)
    assert (out, code) == ("", 2)
    assert err == "eformws: --url must start with http://, https://, ws:// or wss://, got '127.0.0.1:3918'\n"


@pytest_twisted.ensureDeferred
async def test_tail_takes_a_ws_url(tmp_path, start_server, tails):
    server = await start_server()
    tail = tails([LOCKERS, "--url", server.url(""), "--no-replay"], tmp_path, env={"EFORMWS_SESSION": await server.session()})
    await tail.said(r"tailing /ws/lockers \(rooms: locker_updates\)")
    stored = await emit(server, 1)
    assert await tail.printed(1) == [stored]
    tail.signal("INT")
    assert await tail.ended() == (0, None)


@pytest_twisted.ensureDeferred
async def test_tail_with_a_room_prints_only_that_rooms_events(tmp_path, start_server, tails):
    server = await start_server()
    session_id = await server.session()
    tail = tails([LOCKERS, "--room", "kiosk-7", "--url", server.http(""), "--session", session_id], tmp_path)
    await tail.said(r"tailing /ws/lockers \(rooms: kiosk-7\)")
    stored = [await emit(server, n, kiosk) for n, kiosk in enumerate(["kiosk-1", "kiosk-7", "kiosk-2", "kiosk-7"])]
    assert await tail.printed(2) == [stored[1], stored[3]]
    await server.service.events.broadcast_to_room(LOCKERS, "kiosk-7", "marker", {})
    assert (await tail.printed(3))[2]["type"] == "marker"
    tail.signal("INT")
    assert await tail.ended() == (0, None)


@pytest.mark.slow  # ~3.5 s: a gateway restarted under `tail`
@pytest_twisted.ensureDeferred
async def test_tail_survives_a_gateway_restart_and_prints_every_event_once_in_order(tmp_path, spawn, tails):
    config = write_config(tmp_path, f'[auth]\napi_tokens = ["{TOKEN}"]\n')
    session_id = await create_session(tmp_path, config)
    gateway = await spawn(["--config", str(config)], tmp_path)
    port = str(gateway.port)
    tail = tails([LOCKERS, "--url", gateway.http(""), "--max-delay", "0.5"], tmp_path, env={"EFORMWS_SESSION": session_id})
    await tail.said(r"tailing /ws/lockers")
    emitted = [await emit_over_http(gateway, n) for n in range(10)]
    await tail.printed(10)
    lost = tail.mark_err
    gateway.process.signal("TERM")
    assert await gateway.process.ended() == (0, None)
    await tail.said(r"connection lost \(Server shutdown\); retrying in", after=lost)
    # While nothing listens on the port, another process on the same files stores events.
    elsewhere = await spawn(["--config", str(config)], tmp_path)
    emitted += [await emit_over_http(elsewhere, n) for n in range(10, 110)]
    elsewhere.process.signal("TERM")
    assert await elsewhere.process.ended() == (0, None)
    back = await spawn(["--config", str(config), "--port", port], tmp_path)
    emitted += [await emit_over_http(back, n) for n in range(110, 130)]  # while tail reconnects
    printed = await tail.printed(len(emitted))
    assert [e["seq"] for e in printed] == [e["seq"] for e in emitted]
    assert printed == emitted
    await tail.said(r"reconnected to /ws/lockers \(rooms: locker_updates\); resumed \d+ events", after=lost)
    live = await emit_over_http(back, 999)
    assert (await tail.printed(len(emitted) + 1))[-1] == live
    tail.signal("INT")
    assert await tail.ended() == (0, None)
    assert tail.out.decode().count("\n") == len(emitted) + 1
    assert session_id not in tail.log and "Traceback" not in tail.log


@pytest_twisted.ensureDeferred
async def test_tail_without_a_session_says_how_to_give_one_in_one_line_and_exit_1(tmp_path, start_server, tails):
    server = await start_server()
    tail = tails([LOCKERS, "--url", server.http("")], tmp_path)
    assert await tail.ended() == (1, None)
    err = tail.err.decode()
    assert tail.out == b""
    assert one_line_error(err.splitlines()[-1] + "\n"), err
    assert "Authentication required" in err and "EFORMWS_SESSION" in err
    assert "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_tail_with_an_unknown_session_is_refused_without_printing_it(tmp_path, start_server, tails):
    server = await start_server()
    unknown = "f" * 43
    tail = tails([LOCKERS, "--url", server.http(""), "--quiet"], tmp_path, env={"EFORMWS_SESSION": unknown})
    assert await tail.ended() == (1, None)
    err = tail.err.decode()
    assert one_line_error(err), err
    assert "Authentication failed" in err and unknown not in err


@pytest_twisted.ensureDeferred
async def test_tail_of_an_unknown_namespace_is_one_line_and_exit_1(tmp_path, start_server, tails):
    server = await start_server()
    tail = tails(["/ws/nope", "--url", server.http(""), "--quiet"], tmp_path, env={"EFORMWS_SESSION": await server.session()})
    assert await tail.ended() == (1, None)
    assert one_line_error(tail.err.decode()), tail.log
    assert "404" in tail.err.decode()


# -- check-config ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_check_config_of_a_good_file_prints_ok_and_exits_0(tmp_path):
    config = write_config(tmp_path, '[auth]\napi_tokens = ["x"]\n[[namespaces]]\npath = "/ws/custom"\n')
    assert await cli("check-config", str(config), cwd=tmp_path) == ("ok\n", "", 0)


@pytest_twisted.ensureDeferred
async def test_check_config_of_the_documented_example_prints_ok(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "etc" / "eformws.toml"
    assert await cli("check-config", str(example), cwd=tmp_path) == ("ok\n", "", 0)


@pytest.mark.parametrize(
    "text,names",
    [
        ("[server]\nprot = 3000\n", ["server.prot", "unknown key"]),
        ('[server]\nport = "abc"\n', ["server.port", "'abc'"]),
        ('[[namespaces]]\npath = "lockers"\n', ["namespaces[0].path"]),
        ("[server\n", ["not valid TOML"]),
    ],
    ids=["unknown key", "bad value", "bad namespace", "not toml"],
)
@pytest_twisted.ensureDeferred
async def test_check_config_of_a_bad_file_is_one_line_naming_the_key_and_exit_1(tmp_path, text, names):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out, err, code = await cli("check-config", str(path), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert one_line_error(err), err
    for name in names:
        assert name in err


@pytest_twisted.ensureDeferred
async def test_check_config_applies_the_environment_as_the_server_would(tmp_path):
    config = write_config(tmp_path)
    out, err, code = await cli("check-config", str(config), cwd=tmp_path, env={"EFORMWS_SERVER_PORT": "99999"})
    assert (out, code) == ("", 1)
    assert "server.port" in err and "99999" in err


@pytest_twisted.ensureDeferred
async def test_check_config_of_a_missing_file_is_one_line_and_exit_1(tmp_path):
    out, err, code = await cli("check-config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert one_line_error(err), err
    assert "cannot read" in err


# -- emit and broadcast -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_emit_prints_the_stored_event_and_broadcast_says_how_many_got_it(tmp_path, start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    client = await server.join(LOCKERS, await server.session())
    data = {"lockerId": "kiosk-1:3", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"}
    out, err, code = await cli("emit", "locker_state_changed", "--data", json.dumps(data), "--url", server.http(""),
                               "--token", TOKEN, cwd=tmp_path)
    assert code == 0, err
    stored = json.loads(out)
    assert await client.recv() == stored and stored["data"] == data
    out, err, code = await cli("broadcast", LOCKERS, "maintenance", "--data", '{"minutes":5}', "--url", server.http(""),
                               cwd=tmp_path, env={"EFORMWS_TOKEN": TOKEN})
    assert (out, err, code) == ("Broadcast sent to /ws/lockers (1 delivered)\n", "", 0)
    assert (await client.recv())["type"] == "maintenance"


@pytest_twisted.ensureDeferred
async def test_emit_of_an_invalid_event_is_the_servers_message_in_one_line(tmp_path, start_server):
    server = await start_server({"auth.api_tokens": [TOKEN]})
    data = {"lockerId": "kiosk-1:3", "oldState": "shut", "newState": "open", "kioskId": "kiosk-1"}
    out, err, code = await cli("emit", "locker_state_changed", "--data", json.dumps(data), "--url", server.http(""),
                               "--token", TOKEN, cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert one_line_error(err), err
    assert "400" in err and "data.oldState" in err


@pytest_twisted.ensureDeferred
async def test_status_says_when_the_room_list_is_cut_and_how_to_see_all(tmp_path, start_server):
    server = await start_server({"server.status_room_limit": 1})
    session_id = await server.session()
    client = await server.join(LOCKERS, session_id)
    await client.send({"type": "join_room", "room": "kiosk-1"})
    assert (await client.recv())["type"] == "room_joined"
    out, err, code = await cli("status", "--url", server.http(""), cwd=tmp_path)
    assert code == 0, err
    assert "/ws/lockers: the 1 largest of 2 rooms listed (all: GET /api/websocket/status?rooms=all" in out, out


@pytest_twisted.ensureDeferred
async def test_status_with_a_timeout_below_zero_is_refused_as_a_wrong_option(tmp_path):
    out, err, code = await cli("status", "--timeout", "-1", cwd=tmp_path)
    assert code == 2
    assert "argument --timeout: must be a number of seconds above 0, got '-1'" in err


@pytest_twisted.ensureDeferred
async def test_tail_since_something_that_is_no_seq_is_refused(tmp_path):
    out, err, code = await cli("tail", "--since", "bogus", cwd=tmp_path)
    assert code == 2
    assert "argument --since: must be a seq" in err


@pytest_twisted.ensureDeferred
async def test_a_kiosk_session_without_its_kiosk_is_refused(tmp_path):
    out, err, code = await cli("sessions", "create", "--user", "k", "--role", "kiosk", "--sessions-db",
                               str(tmp_path / "s.db"), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert err.startswith("eformws: a kiosk session needs --kiosk KIOSK_ID")


@pytest_twisted.ensureDeferred
async def test_check_config_names_an_unknown_section_as_a_section(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[serverr]\nport = 1\n")
    out, err, code = await cli("check-config", str(path), cwd=tmp_path)
    assert code == 1
    assert err.startswith("eformws: [serverr]: unknown section (sections: auth, events, log")


@pytest_twisted.ensureDeferred
async def test_a_bad_value_in_the_file_is_reported_even_where_an_option_overrides_it(tmp_path):
    from processes import TWISTD, run

    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = "abc"\n')
    out, err, code = await run(TWISTD, "-n", "--pidfile=", "eformws", "--config", str(path), "--port", "0", cwd=tmp_path)
    assert code == 1
    assert err == f"eformws: configuration error: server.port in {path}: must be an integer from 0 to 65535, got 'abc'\n"


@pytest.mark.parametrize("options", [(), ("--port", "0")], ids=["alone", "even_where_an_option_overrides_it"])
@pytest_twisted.ensureDeferred
async def test_a_bad_environment_value_is_reported_naming_the_variable(tmp_path, options):
    out, err, code = await twistd(*options, cwd=tmp_path, env={"EFORMWS_SERVER_PORT": "abc"})
    assert code == 1
    assert err == ("eformws: configuration error: server.port from EFORMWS_SERVER_PORT: must be an integer from 0 to "
                   "65535, got 'abc'\n")
    assert "listening" not in out


@pytest_twisted.ensureDeferred
async def test_a_setting_above_every_section_is_told_the_section_it_goes_in(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("port = 3967\n")
    out, err, code = await twistd("--config", str(path), cwd=tmp_path)
    assert code == 1
    assert err == "eformws: configuration error: port: settings go in a section: write [server] on a line above port = ...\n"


@pytest_twisted.ensureDeferred
async def test_twistd_help_gives_the_host_default_and_the_demos(tmp_path):
    out, err, code = await twistd("--help", cwd=tmp_path)
    assert code == 0, err
    assert "(server.host, default 0.0.0.0; 127.0.0.1 with --demo)" in " ".join(out.split()), out


@pytest_twisted.ensureDeferred
async def test_check_config_warns_about_an_eformws_variable_it_does_not_read(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("")
    out, err, code = await cli("check-config", str(path), cwd=tmp_path, env={"EFORMWS_SERVR_PORT": "1"})
    assert (out, code) == ("ok\n", 0)
    assert "eformws: warning: EFORMWS_SERVR_PORT is not a setting of eformws and is ignored" in err


# -- over TLS: --cacert and EFORMWS_CACERT ----------------------------------------------------------


async def tls_gateway(tmp_path, spawn):
    """`twistd -n eformws` serving https:// and wss:// with a self-signed certificate for
    127.0.0.1: (its https:// URL, the certificate's path, the config's path)."""
    from certificates import self_signed

    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path, f'[auth]\napi_tokens = ["{TOKEN}"]\n')
    gateway = await spawn(["--config", str(config), "--tls-certificate", str(cert), "--tls-private-key", str(key)],
                          tmp_path)
    return f"https://127.0.0.1:{gateway.port}", cert, config


UNTRUSTED = ("the certificate of {url} is not trusted (self-signed certificate): pass --cacert FILE, or set "
             "EFORMWS_CACERT, with the certificate (PEM) of the CA that signed it, or the certificate itself if "
             "self-signed\n")


@pytest_twisted.ensureDeferred
async def test_status_over_https_with_cacert_of_the_self_signed_certificate_works(tmp_path, spawn):
    url, cert, _ = await tls_gateway(tmp_path, spawn)
    out, err, code = await cli("status", "--url", url, "--cacert", str(cert), cwd=tmp_path)
    assert code == 0, err
    assert re.search(rf"^gateway\s+{re.escape(url)}$", out, re.M), out
    assert re.search(r"^health\s+ok$", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_status_over_https_without_cacert_says_the_certificate_is_not_trusted_and_suggests_cacert(
        tmp_path, spawn):
    url, _, _ = await tls_gateway(tmp_path, spawn)
    out, err, code = await cli("status", "--url", url, cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert err == "eformws: " + UNTRUSTED.format(url=url)


@pytest_twisted.ensureDeferred
async def test_status_uses_eformws_cacert_when_there_is_no_cacert_option(tmp_path, spawn):
    url, cert, _ = await tls_gateway(tmp_path, spawn)
    out, err, code = await cli("status", "--json", "--url", url, cwd=tmp_path, env={"EFORMWS_CACERT": str(cert)})
    assert code == 0, err
    assert json.loads(out)["status"] == "active"


@pytest_twisted.ensureDeferred
async def test_cacert_option_wins_over_eformws_cacert(tmp_path, spawn):
    url, cert, _ = await tls_gateway(tmp_path, spawn)
    out, err, code = await cli("status", "--json", "--url", url, "--cacert", str(cert), cwd=tmp_path,
                               env={"EFORMWS_CACERT": str(tmp_path / "missing.pem")})
    assert code == 0, err


@pytest_twisted.ensureDeferred
async def test_status_with_a_cacert_that_did_not_sign_the_certificate_names_the_file(tmp_path, spawn):
    from certificates import self_signed

    url, _, _ = await tls_gateway(tmp_path, spawn)
    other = tmp_path / "other"
    other.mkdir()
    wrong, _ = self_signed(other)
    out, err, code = await cli("status", "--url", url, "--cacert", str(wrong), cwd=tmp_path)
    assert (out, code) == ("", 1)
    assert err == (f"eformws: the certificate of {url} is not trusted (self-signed certificate): --cacert {wrong} "
                   "holds neither it nor the CA that signed it\n")


@pytest_twisted.ensureDeferred
async def test_tail_over_wss_with_cacert_prints_an_event_emitted_over_https(tmp_path, spawn, tails):
    url, cert, config = await tls_gateway(tmp_path, spawn)
    session_id = await create_session(tmp_path, config)
    wss = "wss" + url[len("https"):]
    tail = tails([LOCKERS, "--url", wss, "--cacert", str(cert), "--no-replay"], tmp_path,
                 env={"EFORMWS_SESSION": session_id})
    await tail.said(r"tailing /ws/lockers \(rooms: locker_updates\)")
    data = {"lockerId": "kiosk-1:1", "oldState": "closed", "newState": "open", "kioskId": "kiosk-1"}
    out, err, code = await cli("emit", "locker_state_changed", "--data", json.dumps(data), "--url", url,
                               "--cacert", str(cert), "--token", TOKEN, cwd=tmp_path)
    assert code == 0, err
    assert await tail.printed(1) == [json.loads(out)]
    tail.signal("INT")
    assert await tail.ended() == (0, None)


@pytest_twisted.ensureDeferred
async def test_tail_over_wss_without_cacert_says_the_certificate_is_not_trusted_and_exits_1(tmp_path, spawn, tails):
    url, _, config = await tls_gateway(tmp_path, spawn)
    wss = "wss" + url[len("https"):]
    tail = tails([LOCKERS, "--url", wss], tmp_path, env={"EFORMWS_SESSION": await create_session(tmp_path, config)})
    assert await tail.ended() == (1, None)
    assert (tail.out, tail.err.decode()) == (b"", "eformws: " + UNTRUSTED.format(url=wss))


@pytest_twisted.ensureDeferred
async def test_a_cacert_file_that_is_not_there_is_one_line_naming_it_and_exit_2(tmp_path):
    missing = tmp_path / "missing.pem"
    out, err, code = await cli("status", "--url", "https://127.0.0.1:1", "--cacert", str(missing), cwd=tmp_path)
    assert (out, err, code) == ("", f"eformws: --cacert: cannot read {missing} (No such file or directory)\n", 2)


@pytest_twisted.ensureDeferred
async def test_a_cacert_file_without_a_pem_certificate_is_one_line_naming_it_and_exit_2(tmp_path):
    from certificates import self_signed

    _, key = self_signed(tmp_path)
    out, err, code = await cli("tail", LOCKERS, "--url", "wss://127.0.0.1:1", "--cacert", str(key), cwd=tmp_path)
    assert (out, err, code) == ("", f"eformws: --cacert: no PEM certificate (-----BEGIN CERTIFICATE-----) in {key}\n", 2)
