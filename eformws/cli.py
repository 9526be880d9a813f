"""The `eformws` command: subcommands for operators (sessions create|list|revoke); errors
are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from eformws.config import ROLES, ConfigError, load_config
from eformws.sessions import sqlite as session_sql
from eformws.sqlite import connect


class CommandError(Exception):
    pass


def _config(args):
    return load_config(args.config)


REDIS_CONNECT_TIMEOUT = 5.0


def _in_redis(config, action):
    """Run `action(store)` against the Redis session store on a reactor of our own; its
    result, or CommandError with one line (an unreachable Redis included)."""
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import react

    from eformws.redis import RedisAddress
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

    try:
        react(main)
    except SystemExit:
        pass
    if "error" in outcome:
        raise CommandError(outcome["error"])
    return outcome["value"]


def _in_sqlite(config, action):
    connection = connect(config.get("sessions", "path"))
    try:
        return action(connection)
    except ValueError as e:
        raise CommandError(str(e)) from None
    finally:
        connection.close()


def _sessions(args, in_sqlite, in_redis):
    """Run the SQLite or the Redis form of a sessions command, whichever the config uses."""
    config = _config(args)
    if config.get("sessions", "backend") == "redis":
        return _in_redis(config, in_redis)
    return _in_sqlite(config, in_sqlite)


def sessions_create(args) -> int:
    config = _config(args)
    ttl = args.ttl if args.ttl is not None else config.get("sessions", "default_ttl")
    session = _sessions(
        args,
        lambda connection: session_sql.create_session(connection, args.user, args.role, args.kiosk, ttl),
        lambda store: store.create(args.user, args.role, args.kiosk, ttl),
    )
    sys.stdout.write(session.id + "\n")
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


def sessions_list(args) -> int:
    rows = _sessions(args, session_sql.list_sessions, lambda store: store.list())
    now = time.time()
    lines = [f"{'REF':<12}  {'USER':<16}  {'ROLE':<6}  {'KIOSK':<12}  {'EXPIRES':<20}  STATE"]
    for row in rows:
        state = "revoked" if row.revoked else ("expired" if row.expires_at <= now else "live")
        lines.append(
            f"{row.ref:<12}  {row.user_id:<16}  {row.role:<6}  {row.kiosk_id or '-':<12}  "
            f"{_when(row.expires_at):<20}  {state}"
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


def _gateway(args) -> tuple[str, str | None]:
    """The gateway's base URL and the bearer credential: --url/--token, else
    EFORMWS_URL/EFORMWS_TOKEN, else the config's port and first API token."""
    config = _config(args)
    url = args.url or os.environ.get("EFORMWS_URL") or f"http://127.0.0.1:{config.get('server', 'port')}"
    tokens = config.get("auth", "api_tokens")
    token = args.token or os.environ.get("EFORMWS_TOKEN") or (tokens[0] if tokens else None)
    return url.rstrip("/"), token


def _post(args, path: str, body: dict) -> dict:
    url, token = _gateway(args)
    if token is None:
        raise CommandError("no credential: pass --token, set EFORMWS_TOKEN, or list auth.api_tokens in the config")
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode("utf-8"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            message = e.reason
        raise CommandError(f"{e.code}: {message}") from None
    except urllib.error.URLError as e:
        raise CommandError(f"cannot reach {url}: {e.reason}") from None


def _json_argument(text: str, name: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise CommandError(f"{name} is not valid JSON ({e.msg} at character {e.pos})") from None


def emit(args) -> int:
    stored = _post(args, "/api/websocket/events", {"type": args.type, "data": _json_argument(args.data, "--data")})
    sys.stdout.write(json.dumps(stored, separators=(",", ":")) + "\n")
    return 0


def broadcast(args) -> int:
    body = {"namespace": args.namespace, "event": args.event, "data": _json_argument(args.data, "--data")}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eformws", description="Operate an eformws gateway.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sessions = commands.add_parser("sessions", help="create, list and revoke sessions")
    actions = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_config(p):
        p.add_argument("--config", metavar="FILE", help="TOML configuration (the server's); default: embedded defaults")
        return p

    create = with_config(actions.add_parser("create", help="create a session and print its id"))
    create.add_argument("--user", required=True, help="user id the session belongs to")
    create.add_argument("--role", required=True, choices=ROLES, help="role of the session")
    create.add_argument("--kiosk", help="kiosk id (for kiosk sessions)")
    create.add_argument("--ttl", type=float, help="lifetime in seconds (default: sessions.default_ttl)")
    create.set_defaults(run=sessions_create)

    listing = with_config(actions.add_parser("list", help="list sessions (by reference, never by id)"))
    listing.set_defaults(run=sessions_list)

    revoke = with_config(actions.add_parser("revoke", help="revoke a session by id or listed reference"))
    revoke.add_argument("id", help="the session id, or the REF that `sessions list` shows")
    revoke.set_defaults(run=sessions_revoke)

    def over_http(p):
        with_config(p)
        p.add_argument("--url", help="gateway base URL (default: EFORMWS_URL, else http://127.0.0.1:<server.port>)")
        p.add_argument("--token", help="API token or admin session id (default: EFORMWS_TOKEN, else auth.api_tokens[0])")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the gateway (default 10)")
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

    demoing = commands.add_parser("demo", help="run a demo gateway: admin session printed, events generated")
    demoing.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000; 0 picks one)")
    demoing.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    demoing.set_defaults(run=demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, ConfigError) as e:
        sys.stderr.write(f"eformws: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"eformws: {e.strerror or e}\n")
        return 1
    except Exception as e:  # the command's promise: one line, never a traceback
        sys.stderr.write(f"eformws: {type(e).__name__}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
