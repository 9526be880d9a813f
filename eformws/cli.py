"""The `eformws` command: subcommands for operators (sessions, emit, broadcast, status, tail,
check-config); errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import NamedTuple
from urllib.parse import urlsplit

from eformws.backends.sqlite import connect
from eformws.core.policy import ROLES
from eformws.runtime.config import ConfigError, load_config, unknown_environment
from eformws.sessions import SessionError, check_session_request, issued
from eformws.sessions import sqlite as session_sql


class CommandError(Exception):
    pass


class UsageError(CommandError):
    """What the command was given cannot be used (a --cacert file, say): exit 2, as for a
    wrong option."""


def _config(args):
    """The configuration the command acts on: --config (the server's file), EFORMWS_*
    variables, and --sessions-db / --redis where the command has them (as for twistd)."""
    overrides = {}
    if getattr(args, "sessions_db", None) is not None:
        overrides[("sessions", "path")] = args.sessions_db
    if getattr(args, "redis", None) is not None:
        overrides[("redis", "url")] = args.redis
    return load_config(args.config, overrides)


REDIS_CONNECT_TIMEOUT = 5.0


def _in_redis(config, action):
    """Run `action(store)` against the Redis session store on a reactor of our own; its
    result, or CommandError with one line (an unreachable Redis included)."""
    from twisted.internet.defer import inlineCallbacks

    from eformws.backends.redis import RedisAddress
    from eformws.sessions.redis import RedisSessionStore

    address = RedisAddress.parse(config.get("redis", "url"))
    outcome: dict = {}

    @inlineCallbacks
    def main(reactor):
        store = RedisSessionStore(address, config.get("redis", "prefix"), max_delay=1.0)
        store.startService()
        try:
            waiting = store.connection.when_connected()
            waiting.addTimeout(REDIS_CONNECT_TIMEOUT, reactor)
            yield waiting
            outcome["value"] = yield action(store)
        except ValueError as e:
            outcome["error"] = str(e)
        except Exception as e:
            if store.connection.connected:
                outcome["error"] = f"redis answered with an error: {e}"
            else:
                outcome["error"] = f"cannot reach redis at {address.host}:{address.port} within {REDIS_CONNECT_TIMEOUT:g} s"
        finally:
            yield store.stopService()

    return _react(main, outcome)


def _react(main, outcome: dict):
    """Run `main(reactor)` on a reactor of this command's own; the `value` it left in
    `outcome`, or CommandError with the one-line `error` it left there."""
    from twisted.internet.task import react

    try:
        react(main)
    except SystemExit:
        pass
    if "error" in outcome:
        raise CommandError(outcome["error"])
    return outcome.get("value")


def _in_sqlite(config, action, creating: bool = False):
    """Run `action(connection)` on the SQLite session store. A file that is not there is
    made only to create a session, with a warning naming it (the server must use that
    file); to list or revoke, it is an error."""
    path = config.get("sessions", "path")
    if not os.path.exists(path):
        if not creating:
            raise CommandError(f"no session database at {os.path.abspath(path)} (the server's: --config FILE, "
                               "--sessions-db FILE or --redis URL, as given to twistd eformws)")
        sys.stderr.write(f"eformws: warning: created a new session database at {os.path.abspath(path)}; the server "
                         "must use this file (twistd eformws --sessions-db, or sessions.path)\n")
    connection = connect(path)
    try:
        return action(connection)
    except ValueError as e:
        raise CommandError(str(e)) from None
    finally:
        connection.close()


def _sessions(args, in_sqlite, in_redis, creating: bool = False):
    """Run the SQLite or the Redis form of a sessions command, whichever the config uses."""
    config = _config(args)
    if config.get("sessions", "backend") == "redis":
        return _in_redis(config, in_redis)
    return _in_sqlite(config, in_sqlite, creating)


# How `sessions create` names what SessionError is about.
CREATE_OPTIONS = {"user_id": "--user", "role": "--role", "kiosk_id": "--kiosk KIOSK_ID", "ttl": "--ttl"}


def sessions_create(args) -> int:
    config = _config(args)
    ttl = args.ttl if args.ttl is not None else config.get("sessions", "default_ttl")
    try:
        check_session_request(args.user, args.role, args.kiosk, ttl, CREATE_OPTIONS)
    except SessionError as e:
        raise CommandError(str(e)) from None
    session = _sessions(
        args,
        lambda connection: session_sql.create_session(connection, args.user, args.role, args.kiosk, ttl),
        lambda store: store.create(args.user, args.role, args.kiosk, ttl),
        creating=True,
    )
    if args.json:
        sys.stdout.write(json.dumps(issued(session, config.get("wamp", "cra_key"))) + "\n")
    else:
        sys.stdout.write(session.id + "\n")
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


def sessions_list(args) -> int:
    rows = _sessions(args, session_sql.list_sessions, lambda store: store.list())
    now = time.time()
    lines = [f"{'REF':<12}  {'USER':<16}  {'ROLE':<6}  {'KIOSK':<12}  {'EXPIRES':<20}  STATE"]
    for row in rows:
        lines.append(
            f"{row.ref:<12}  {row.user_id:<16}  {row.role:<6}  {row.kiosk_id or '-':<12}  "
            f"{_when(row.expires_at):<20}  {row.state(now)}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def sessions_revoke(args) -> int:
    count = _sessions(
        args,
        lambda connection: session_sql.revoke_session(connection, args.id),
        lambda store: store.revoke(args.id),
    )
    if not count:
        raise CommandError("no live session matches that id or reference")
    sys.stdout.write("revoked\n")
    return 0


HTTP_SCHEMES = ("http", "https")
WEBSOCKET_SCHEMES = ("http", "https", "ws", "wss")  # tail: its client takes either


def _gateway(args, schemes: tuple[str, ...] = HTTP_SCHEMES) -> tuple[str, str | None]:
    """The gateway's base URL and the bearer credential: --url/--token, else
    EFORMWS_URL/EFORMWS_TOKEN, else the config's port and first API token. A URL of
    another scheme than `schemes`, or without a host, is UsageError naming where it came from."""
    config = _config(args)
    if args.url:
        url, source = args.url, "--url"
    elif os.environ.get("EFORMWS_URL"):
        url, source = os.environ["EFORMWS_URL"], "EFORMWS_URL"
    else:
        url, source = f"http://127.0.0.1:{config.get('server', 'port')}", None
    if source is not None:
        _check_url(url, source, schemes)
    tokens = config.get("auth", "api_tokens")
    token = args.token or os.environ.get("EFORMWS_TOKEN") or (tokens[0] if tokens else None)
    return url.rstrip("/"), token


def _check_url(url: str, source: str, schemes: tuple[str, ...]) -> None:
    """UsageError unless `url` is scheme://host[:port][/path] with one of `schemes`."""
    allowed = " or ".join(", ".join(f"{scheme}://" for scheme in schemes).rsplit(", ", 1))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is no number)
    except ValueError:
        raise UsageError(f"{source} has a port that is not a number from 0 to 65535, got {url!r}") from None
    if parts.scheme not in schemes or not url.lower().startswith(f"{parts.scheme}://"):
        raise UsageError(f"{source} must start with {allowed}, got {url!r}")
    if not parts.hostname:
        raise UsageError(f"{source} must name a host after {parts.scheme}:// (like {parts.scheme}://127.0.0.1:3000), "
                         f"got {url!r}")


class _Trust(NamedTuple):
    """What https:// and wss:// URLs are verified against: the PEM certificates of a CA
    bundle or of a self-signed certificate, from `source` (--cacert or EFORMWS_CACERT)."""

    source: str
    path: str
    certificates: list[bytes]

    def context(self) -> ssl.SSLContext:
        """For urllib and ssl: these certificates only (not the system's), names checked."""
        return ssl.create_default_context(cadata=b"\n".join(self.certificates).decode("ascii"))

    def client_options(self, hostname: str):
        """For Twisted (`tail`'s wss://): the same trust, the same name check."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

        root = trustRootFromCertificates([Certificate.loadPEM(block) for block in self.certificates])
        return optionsForClientTLS(hostname, trustRoot=root)


def _trust(args) -> _Trust | None:
    """--cacert FILE, else EFORMWS_CACERT; None (the system's CAs) without either. A file
    that cannot be used is UsageError, naming it."""
    path = args.cacert or os.environ.get("EFORMWS_CACERT") or None
    if path is None:
        return None
    source = "--cacert" if args.cacert else "EFORMWS_CACERT"
    from eformws.runtime.tls import PEM_CERTIFICATE

    try:
        with open(path, "rb") as f:
            blocks = PEM_CERTIFICATE.findall(f.read())
    except OSError as e:
        raise UsageError(f"{source}: cannot read {path} ({e.strerror or e})") from None
    if not blocks:
        raise UsageError(f"{source}: no PEM certificate (-----BEGIN CERTIFICATE-----) in {path}")
    trust = _Trust(source, path, blocks)
    try:
        trust.context()
    except (ValueError, ssl.SSLError):
        raise UsageError(f"{source}: {path} holds a certificate that cannot be read") from None
    return trust


# OpenSSL's X509_V_ERR_* codes of a certificate that no trusted one signed, and of one
# issued for another name or address than the URL's.
UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
NAME_MISMATCH = frozenset({62, 64})


def _untrusted(url: str, error: ssl.SSLCertVerificationError, trust: _Trust | None) -> str:
    """The one line for a certificate that did not verify, with what to do about it."""
    text = f"the certificate of {url} is not trusted ({(error.verify_message or error.reason or '').rstrip('.')})"
    if error.verify_code in NAME_MISMATCH:
        return text + ": --url must name the host as the certificate does"
    if error.verify_code in UNKNOWN_ISSUER and trust is None:
        return text + (": pass --cacert FILE, or set EFORMWS_CACERT, with the certificate (PEM) of the CA that "
                       "signed it, or the certificate itself if self-signed")
    if error.verify_code in UNKNOWN_ISSUER:
        return text + f": {trust.source} {trust.path} holds neither it nor the CA that signed it"
    return text


def _request(args, method: str, path: str, body: dict | None = None, credential: bool = True,
             answers: tuple[int, ...] = ()) -> dict:
    """One HTTP call to the gateway; its JSON answer (of a 2xx, or of a status in `answers`),
    or CommandError with one line."""
    url, token = _gateway(args)
    trust = _trust(args)
    headers = {}
    if credential:
        if token is None:
            raise CommandError("no credential: pass --token, set EFORMWS_TOKEN, or list auth.api_tokens in the config")
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    except ValueError:
        raise CommandError(f"not a gateway URL: {url!r} (like http://127.0.0.1:3000)") from None
    try:
        context = trust.context() if trust is not None else None
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code in answers:
            return json.loads(e.read())
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except (ValueError, AttributeError):
            message = e.reason
        raise CommandError(f"{e.code}: {message}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise CommandError(_untrusted(url, e.reason, trust)) from None
        reason = "timed out" if isinstance(e.reason, TimeoutError) else e.reason
        raise CommandError(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise CommandError(f"{url} did not answer within {args.timeout:g} s") from None
    except ValueError:
        raise CommandError(f"{url} did not answer with JSON: is it an eformws gateway?") from None


def _post(args, path: str, body: dict) -> dict:
    return _request(args, "POST", path, body)


def _json_object(text: str, name: str) -> dict:
    """The JSON object an option gives; UsageError (exit 2) for anything else."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{name} is not valid JSON ({e.msg} at character {e.pos}); it must be a JSON object, "
                         "like '{\"minutes\": 5}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object ({{...}}), got {JSON_KINDS.get(type(value), 'another value')}: "
                         f"{text!r}")
    return value


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


def emit(args) -> int:
    stored = _post(args, "/api/websocket/events", {"type": args.type, "data": _json_object(args.data, "--data")})
    sys.stdout.write(json.dumps(stored, separators=(",", ":")) + "\n")
    return 0


def broadcast(args) -> int:
    body = {"namespace": args.namespace, "event": args.event, "data": _json_object(args.data, "--data")}
    if args.room is not None:
        body["room"] = args.room
    answer = _post(args, "/api/websocket/broadcast", body)
    sys.stdout.write(f"{answer['message']} ({answer['delivered']} delivered)\n")
    return 0


def demo(args) -> int:
    """`twistd -n eformws --demo` in this process's place (so Ctrl-C reaches the server)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    arguments = [twistd, "--pidfile=", "-n", "eformws", "--demo", "--port", str(args.port), "--host", args.host]
    os.execv(twistd, arguments)
    return 1  # not reached


def _table(headers: list[str], rows: list[list], right: frozenset[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell; the columns in `right` aligned right."""
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return lines


def _milliseconds(value) -> str:
    return f"{value:g} ms" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def format_status(body: dict, url: str, health: dict | None = None) -> str:
    """GET /api/websocket/status as tables a person reads: connections by namespace and
    endpoint, room sizes, the deployment's processes (with Redis), delivery latency; and
    /healthz's checks (`health`) under the status."""
    lines = [
        f"gateway      {url}",
        f"status       {body.get('status', '?')}",
    ]
    if health is not None:
        lines.append(f"health       {health.get('status', '?')}")
        lines += [f"  {name:<14}{state}" for name, state in (health.get("checks") or {}).items()]
    lines += [
        f"connections  {body.get('total_connections', '?')}",
        f"as of        {body.get('timestamp', '?')}",
        "",
    ]
    paths = [[path, "namespace", count] for path, count in (body.get("namespaces") or {}).items()]
    paths += [[path, "endpoint", count] for path, count in (body.get("endpoints") or {}).items()]
    lines += _table(["PATH", "KIND", "CONNECTIONS"], paths, right=frozenset({2}))
    rooms = [
        [path, room, size]
        for path, sizes in (body.get("rooms") or {}).items()
        for room, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    ]
    lines.append("")
    lines += _table(["NAMESPACE", "ROOM", "MEMBERS"], rooms, right=frozenset({2})) if rooms else ["no rooms"]
    if body.get("rooms_truncated"):
        counts = body.get("room_counts") or {}
        listed = {path: len(sizes) for path, sizes in (body.get("rooms") or {}).items()}
        lines += [f"{path}: the {listed.get(path, 0)} largest of {count} rooms listed (all: GET "
                  f"/api/websocket/status?rooms=all with an admin credential)"
                  for path, count in counts.items() if count > listed.get(path, 0)]
    nodes = body.get("nodes")
    if nodes is not None:
        lines.append("")
        rows = [
            [str(node.get("id", "?")) + (" (stale)" if node.get("stale") else ""), node.get("connections", "?"),
             node.get("last_seen", "?")]
            for node in nodes
        ]
        lines += _table(["NODE", "CONNECTIONS", "LAST SEEN"], rows, right=frozenset({1})) if rows else ["no nodes"]
    latency = body.get("latency_metrics") or {}
    lines.append("")
    lines.append(
        "latency      "
        + "   ".join(f"{name} {_milliseconds(latency[name])}" for name in ("median", "p95", "p99") if name in latency)
        + "   (message created to handed to the last recipient)"
    )
    return "\n".join(lines) + "\n"


def status(args) -> int:
    body = _request(args, "GET", "/api/websocket/status", credential=False)
    if not isinstance(body, dict):
        raise CommandError("the status answer is not a JSON object: is this an eformws gateway?")
    if args.json:
        sys.stdout.write(json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        health = _request(args, "GET", "/healthz", credential=False, answers=(503,))
        sys.stdout.write(format_status(body, _gateway(args)[0], health if isinstance(health, dict) else None))
    return 0


def check_config(args) -> int:
    """Load FILE as `twistd eformws --config FILE` would (EFORMWS_* variables included)."""
    load_config(args.file)
    for name in unknown_environment(os.environ):
        sys.stderr.write(f"eformws: warning: {name} is not a setting of eformws and is ignored "
                         "(settings: EFORMWS_<SECTION>_<KEY>, e.g. EFORMWS_SERVER_PORT)\n")
    sys.stdout.write("ok\n")
    return 0


class _Tail:
    """`eformws tail`: every event one JSON line on stdout; notices on stderr."""

    def __init__(self, client, quiet: bool):
        self.client = client
        self.quiet = quiet
        self.connections = 0
        self.resumed_now = None
        self.stdout_gone = False
        self.error: str | None = None
        client.on("*", self.event)
        client.on_connect(self.connected)
        client.on_disconnect(self.disconnected)
        client.on_resumed(self.resumed)

    def notice(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"eformws: {text}\n")
            sys.stderr.flush()

    def event(self, envelope: dict) -> None:
        if self.stdout_gone:
            return
        line = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            sys.stdout.buffer.write(line.encode("utf-8"))
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # the reader (| head) is gone: end quietly
            self.stdout_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            self.client.close()
        except OSError as e:  # a full disk, say: say so and end
            self.stdout_gone = True
            self.error = f"cannot write the output: {e.strerror or e}"
            self.client.close()

    def connected(self, connection: dict) -> None:
        self.connections += 1
        rooms = ", ".join(sorted(self.client.rooms)) or "none"
        what = "tailing" if self.connections == 1 else "reconnected to"
        text = f"{what} {self.client.namespace} (rooms: {rooms})"
        resumed, self.resumed_now = self.resumed_now, None
        if resumed is not None and resumed.recovered:
            text += f"; resumed {resumed.count} events since the last one shown"
        elif resumed is not None:
            text += (
                "; EVENTS WERE MISSED and cannot be resumed (recovered: false: too old, too many, "
                "or another event log); the recent events still held follow"
            )
        self.notice(text)

    def disconnected(self, disconnect) -> None:
        if disconnect.reconnect_in is None:
            return
        what = "connection lost" if disconnect.was_connected else "cannot connect"
        self.notice(f"{what} ({disconnect.reason}); retrying in {disconnect.reconnect_in:.1f} s")

    def resumed(self, resumed) -> None:
        self.resumed_now = resumed  # said with the connection (on_connect comes next)


def _check_certificate(url: str, trust: _Trust | None, timeout: float) -> None:
    """Before `tail` over wss:// (or https://): one TLS handshake, so that a certificate not
    trusted is one line and exit 1, as for `status`, rather than reconnecting forever. A
    gateway not reachable yet is left to tail's reconnecting."""
    import socket

    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss"):
        return
    context = trust.context() if trust is not None else ssl.create_default_context()
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as raw:
            context.wrap_socket(raw, server_hostname=parts.hostname).close()
    except ssl.SSLCertVerificationError as e:
        raise CommandError(_untrusted(url, e, trust)) from None
    except (OSError, ValueError):
        pass


def tail(args) -> int:

    from eformws.client import ClientError, EformClient

    if args.epoch is not None and args.since is None:
        raise UsageError("--epoch needs --since (it is the epoch of that seq)")
    url, _ = _gateway(args, WEBSOCKET_SCHEMES)
    session_id = args.session or os.environ.get("EFORMWS_SESSION") or None
    rooms = args.room or []
    trust = _trust(args)
    try:
        hostname = urlsplit(url).hostname
        client = EformClient(
            url, args.namespace, session_id, rooms=rooms, default_room=not rooms, since=args.since, epoch=args.epoch,
            replay=not args.no_replay, max_delay=args.max_delay, connect_timeout=args.timeout,
            tls_options=trust.client_options(hostname) if trust is not None and hostname else None,
        )
    except ValueError as e:
        raise CommandError(str(e)) from None
    _check_certificate(url, trust, args.timeout)
    outcome: dict = {}

    async def main(reactor):
        shown = _Tail(client, args.quiet)
        reactor.addSystemEventTrigger("before", "shutdown", client.close)  # Ctrl-C, SIGTERM
        client.connect()
        try:
            await client.when_closed()
        except ClientError as e:
            outcome["error"] = str(e)
            if session_id is None and "Authentication required" in str(e):
                outcome["error"] += " (pass --session or set EFORMWS_SESSION)"
        except Exception as e:  # react would log it where nobody reads, and exit 1 silently
            outcome["error"] = f"{type(e).__name__}: {e}"
        if shown.error is not None:
            outcome["error"] = shown.error

    _react(main, outcome)
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too (subcommands' parsers are of this class as well)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _seconds(text: str) -> float:
    """A number of seconds above 0, for --timeout."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _seq(text: str) -> str:
    """A seq of the event log (a decimal number, as events and `resumed` show it), for --since."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise argparse.ArgumentTypeError(f"must be a seq (a number like 42, as the events show it), got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="eformws", description="Operate an eformws gateway.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sessions = commands.add_parser("sessions", help="create, list and revoke sessions")
    actions = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_config(p):
        p.add_argument("--config", metavar="FILE", help="TOML configuration (the server's); default: embedded defaults")
        return p

    def with_store(p):
        with_config(p)
        p.add_argument("--sessions-db", metavar="FILE",
                       help="SQLite file of the session store (sessions.path; as twistd eformws --sessions-db)")
        p.add_argument("--redis", metavar="URL", help="Redis URL (redis.url): the sessions of a Redis deployment")
        return p

    create = with_store(actions.add_parser("create", help="create a session and print its id"))
    create.add_argument("--user", required=True, help="user id the session belongs to")
    create.add_argument("--role", required=True, choices=ROLES, help="role of the session")
    create.add_argument("--kiosk", help="kiosk id (for kiosk sessions)")
    create.add_argument("--ttl", type=float, help="lifetime in seconds (default: sessions.default_ttl)")
    create.add_argument("--json", action="store_true",
                        help="print the session as POST /api/websocket/sessions answers it (id, ref, ... and, when "
                             "wamp.cra_key is set, its WAMP-CRA authid and secret) instead of the id alone")
    create.set_defaults(run=sessions_create)

    listing = with_store(actions.add_parser("list", help="list sessions (by reference, never by id)"))
    listing.set_defaults(run=sessions_list)

    revoke = with_store(actions.add_parser("revoke", help="revoke a session by id or listed reference"))
    revoke.add_argument("id", help="the session id, or the REF that `sessions list` shows")
    revoke.set_defaults(run=sessions_revoke)

    def with_cacert(p):
        p.add_argument("--cacert", metavar="FILE",
                       help="PEM file of the CA that signed the gateway's certificate, or of that certificate if "
                            "self-signed: https:// and wss:// URLs are verified against it only, instead of the "
                            "system's CAs (default: EFORMWS_CACERT)")
        return p

    def over_http(p):
        with_config(p)
        p.add_argument("--url", help="gateway base URL (default: EFORMWS_URL, else http://127.0.0.1:<server.port>)")
        with_cacert(p)
        p.add_argument("--token", help="API token or admin session id (default: EFORMWS_TOKEN, else auth.api_tokens[0])")
        p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the gateway (default 10)")
        return p

    emitting = over_http(commands.add_parser("emit", help="emit a structured event through the HTTP API"))
    emitting.add_argument("type", help="event type, e.g. locker_state_changed")
    emitting.add_argument("--data", required=True, help="the event's data as a JSON object")
    emitting.set_defaults(run=emit)

    broadcasting = over_http(commands.add_parser("broadcast", help="broadcast to a namespace or a room"))
    broadcasting.add_argument("namespace", help="namespace path, e.g. /ws/lockers")
    broadcasting.add_argument("event", help="event name (the envelope's type)")
    broadcasting.add_argument("--data", required=True, help="the data as a JSON object")
    broadcasting.add_argument("--room", help="only the members of this room")
    broadcasting.set_defaults(run=broadcast)

    def gateway_url(p):
        with_config(p)
        p.add_argument("--url", help="gateway base URL (default: EFORMWS_URL, else http://127.0.0.1:<server.port>)")
        with_cacert(p)
        p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the gateway (default 10)")
        p.set_defaults(token=None)
        return p

    showing = gateway_url(commands.add_parser(
        "status", help="connections, rooms, processes and latency of a running gateway",
        description="A readable summary of GET /api/websocket/status: connections by namespace and endpoint, "
                    "room sizes, the deployment's processes (with Redis) and delivery latency percentiles.",
    ))
    showing.add_argument("--json", action="store_true", help="print the status object as one line of JSON")
    showing.set_defaults(run=status)

    tailing = gateway_url(commands.add_parser(
        "tail", help="print a namespace's live events, one JSON line each, across reconnections",
        description="Print every event of NS as one JSON line on stdout, reconnecting after a network blip "
                    "and resuming from the last event shown (no gap, no duplicate; a gap that cannot be "
                    "recovered is said on stderr). Ctrl-C ends it (exit 0).",
    ))
    tailing.add_argument("namespace", metavar="NS", help="namespace path, e.g. /ws/lockers")
    tailing.add_argument("--room", action="append", metavar="R",
                         help="only this room's events (repeat for several); default: the namespace's default room")
    tailing.add_argument("--session", help="session id (default: EFORMWS_SESSION; the variable keeps it out of ps)")
    tailing.add_argument("--since", metavar="SEQ", type=_seq, help="start after this seq (what the last run showed)")
    tailing.add_argument("--epoch", metavar="EPOCH",
                         help="with --since: the epoch of that seq (from the same line), so that a reset event log is told")
    tailing.add_argument("--no-replay", action="store_true", help="without --since: skip the recent events the gateway replays")
    tailing.add_argument("--max-delay", type=float, default=30.0, metavar="SECONDS",
                         help="longest wait between reconnection attempts (default 30)")
    tailing.add_argument("-q", "--quiet", action="store_true", help="no notices on stderr (errors still)")
    tailing.set_defaults(run=tail)

    checking = commands.add_parser(
        "check-config", help="validate a configuration file: ok, or the first wrong key",
        description="Load FILE as `twistd eformws --config FILE` does (EFORMWS_* variables included): "
                    "print ok and exit 0, or the error naming the key and exit 1.",
    )
    checking.add_argument("file", metavar="FILE", help="TOML configuration file")
    checking.set_defaults(run=check_config)

    demoing = commands.add_parser("demo", help="run a demo gateway: admin session printed, events generated, simulated clients connected")
    demoing.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000; 0 picks one)")
    demoing.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    demoing.set_defaults(run=demo)
    return parser


VALUE_OPTIONS = ("--config", "--sessions-db", "--redis")  # the options of `sessions revoke` that take a value


def _dash_ids(argv: list[str]) -> list[str]:
    """Session ids are URL-safe base64 and may begin with "-", which argparse would take for
    an option: after `sessions revoke`, a token that is none of its options goes behind "--"."""
    if argv[:2] != ["sessions", "revoke"] or "--" in argv:
        return argv
    rest, ids, value_next = [], [], False
    for token in argv[2:]:
        if value_next or not token.startswith("-") or token in ("-h", "--help") or token.startswith(VALUE_OPTIONS):
            rest.append(token)
            value_next = token in VALUE_OPTIONS
        else:
            ids.append(token)
    return argv[:2] + rest + (["--", *ids] if ids else [])


def main(argv=None) -> int:
    args = build_parser().parse_args(_dash_ids(list(sys.argv[1:] if argv is None else argv)))
    try:
        return args.run(args)
    except UsageError as e:
        sys.stderr.write(f"eformws: {e}\n")
        return 2
    except (CommandError, ConfigError) as e:
        sys.stderr.write(f"eformws: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"eformws: {e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("eformws: interrupted\n")
        return 130
    except Exception as e:  # the command's promise: one line, never a traceback
        sys.stderr.write(f"eformws: {type(e).__name__}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
