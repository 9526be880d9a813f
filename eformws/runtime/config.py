"""Configuration: the TOML file, `EFORMWS_*` environment variables and command-line
overrides, merged over embedded defaults and validated key by key into a `Config`."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.logger import Logger

from eformws.core.policy import ROLES
from eformws.sessions import MAX_TTL
from eformws.transports.wamp.permissions import DEFAULT_PERMISSIONS

log = Logger(namespace="eformws.config")


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and the problem."""


def _integer(low: int, high: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: must be an integer from {low} to {high}, got {value!r}")
        return value

    return check


def _number(low: float, high: float) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{key}: must be a number from {low:g} to {high:g}, got {value!r}")
        return float(value)

    return check


def _optional_string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of non-empty strings, got {value!r}")
    return list(value)


def _tokens(key: str, value: Any) -> list[str]:
    """As _strings, but the message shows what was wrong, never the value (a token)."""
    if not isinstance(value, list):
        kind = {str: "a string", int: "a number", float: "a number", bool: "true or false", dict: "a table"}.get(
            type(value), "another value")
        raise ConfigError(f"{key}: must be a list of non-empty strings, got {kind} (value not shown)")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{key}: must be a list of non-empty strings; item {index} is not (value not shown)")
    return list(value)


def _optional_port(key: str, value: Any) -> int | None:
    """A TCP port (0: any free one), or None (left out: no such listener)."""
    if value is None:
        return None
    return _integer(0, 65535)(key, value)


MIN_SECRET_LENGTH = 32


def _secret(key: str, value: Any) -> str:
    """Empty (unset), or a string of at least MIN_SECRET_LENGTH characters; the message
    never shows the value (a deployment secret)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string (value not shown)")
    if value and (len(value) < MIN_SECRET_LENGTH or not value.isprintable()):
        raise ConfigError(f"{key}: must be empty (off) or at least {MIN_SECRET_LENGTH} printable characters, "
                          "e.g. the output of `openssl rand -base64 33` (value not shown)")
    return value


def _roles(key: str, value: Any) -> list[str]:
    roles = _strings(key, value)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(f"{key}: unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
    return roles


def _redis_url(key: str, value: Any) -> str:
    if value == "":
        return value
    from eformws.backends.redis import RedisAddress

    try:
        RedisAddress.parse(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return value


def _field_paths(key: str, value: Any) -> list[str]:
    paths = _strings(key, value)
    for path in paths:
        if not path or any(not part for part in path.split(".")):
            raise ConfigError(f"{key}: each must be a field name or a dotted path like metadata.ownerKey, got {path!r}")
    return paths


def _permissions(key: str, value: Any) -> list:
    from eformws.transports.wamp.permissions import BadPermission, Permissions

    try:
        Permissions.parse(value, key)
    except BadPermission as e:
        raise ConfigError(str(e)) from None
    return value


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


# (section, key) -> (default, validator). etc/eformws.toml documents each of these (those whose
# default is None, "left out", as a commented line).
SCHEMA: dict[tuple[str, str], tuple[Any, Callable[[str, Any], Any]]] = {
    ("server", "host"): ("0.0.0.0", _string),
    ("server", "port"): (3000, _integer(0, 65535)),
    ("server", "backlog"): (1024, _integer(1, 65535)),
    ("server", "max_connections"): (10000, _integer(1, 1_000_000)),
    ("server", "allowed_origins"): ([], _strings),
    ("server", "shutdown_timeout"): (5.0, _number(0, 300)),
    ("server", "max_body_bytes"): (65536, _integer(1, 64 * 1024 * 1024)),
    ("server", "max_http_connections"): (1024, _integer(1, 1_000_000)),
    ("server", "request_head_timeout"): (10.0, _number(0.05, 3600)),
    ("server", "min_body_rate"): (4096, _integer(1, 1 << 30)),
    ("server", "status_room_limit"): (100, _integer(1, 1_000_000)),
    ("websocket", "max_message_bytes"): (65536, _integer(125, 64 * 1024 * 1024)),
    ("websocket", "ping_interval"): (25.0, _number(0, 3600)),
    ("websocket", "ping_timeout"): (10.0, _number(0.1, 3600)),
    ("websocket", "open_handshake_timeout"): (10.0, _number(0.1, 3600)),
    ("websocket", "close_handshake_timeout"): (5.0, _number(0.1, 3600)),
    ("websocket", "max_unsent_bytes"): (1_048_576, _integer(16_384, 1 << 30)),
    ("websocket", "compression"): (False, _boolean),
    ("websocket", "max_rooms"): (100, _integer(1, 100_000)),
    ("websocket", "rate_limit"): (20.0, _number(0.1, 1_000_000)),
    ("websocket", "rate_burst"): (40, _integer(1, 1_000_000)),
    ("websocket", "rate_limit_close_after"): (40, _integer(1, 1_000_000)),
    ("wamp", "max_subscriptions"): (100, _integer(1, 100_000)),
    ("wamp", "max_registrations"): (100, _integer(1, 100_000)),
    ("wamp", "max_message_bytes"): (1_048_576, _integer(1024, 64 * 1024 * 1024)),
    ("wamp", "rate_limit"): (1000.0, _number(0.1, 1_000_000)),
    ("wamp", "rate_burst"): (2000, _integer(1, 1_000_000)),
    ("wamp", "rate_limit_close_after"): (2000, _integer(1, 1_000_000)),
    ("wamp", "max_uri_length"): (512, _integer(64, 65_536)),
    ("wamp", "permissions"): (DEFAULT_PERMISSIONS, _permissions),
    ("wamp", "rawsocket_port"): (None, _optional_port),
    ("wamp", "cra_key"): ("", _secret),
    ("auth", "cookie_names"): (["sessionId", "session"], _strings),
    ("auth", "api_tokens"): ([], _tokens),
    ("auth", "broadcast_roles"): (["admin"], _roles),
    ("auth", "restricted_roles"): (["kiosk"], _roles),
    ("auth", "sensitive_roles"): (["admin", "staff"], _roles),
    ("auth", "session_admin_roles"): (["admin"], _roles),
    ("sessions", "backend"): ("auto", _choice("auto", "sqlite", "redis")),
    ("sessions", "path"): ("eformws.db", _string),
    ("sessions", "default_ttl"): (86400, _integer(1, MAX_TTL)),
    ("sessions", "recheck_interval"): (30.0, _number(0.05, 86400)),
    ("sessions", "lookup_cache"): (5.0, _number(0, 3600)),
    ("events", "store"): ("auto", _choice("auto", "sqlite", "memory", "redis")),
    ("events", "path"): ("eformws.db", _string),
    ("events", "max_events"): (100_000, _integer(1, 100_000_000)),
    ("events", "sweep_interval"): (60.0, _number(0.01, 86400)),
    ("events", "replay_window"): (3600.0, _number(0, 30 * 86400)),
    ("events", "replay_limit"): (50, _integer(0, 10_000)),
    ("events", "catch_up_batch"): (500, _integer(1, 100_000)),
    ("events", "max_data_bytes"): (65536, _integer(256, 64 * 1024 * 1024)),
    ("events", "idempotency_window"): (600.0, _number(1, 7 * 86400)),
    ("events", "sensitive_fields"): (["user_contact", "metadata.ownerKey", "note"], _field_paths),
    ("redis", "url"): ("", _redis_url),
    ("redis", "prefix"): ("eformws:", _string),
    ("redis", "outage_buffer"): (10000, _integer(1, 10_000_000)),
    ("redis", "bus_stream_length"): (100_000, _integer(100, 100_000_000)),
    ("redis", "emit_timeout"): (5.0, _number(0.1, 300)),
    ("redis", "reconnect_initial_delay"): (0.5, _number(0.01, 60)),
    ("redis", "reconnect_max_delay"): (10.0, _number(0.1, 600)),
    ("redis", "node_heartbeat"): (2.0, _number(0.05, 60)),
    ("redis", "node_ttl"): (10.0, _number(0.1, 600)),
    ("server", "workers"): (1, _integer(1, 64)),
    ("server", "tls_certificate"): ("", _optional_string),
    ("server", "tls_private_key"): ("", _optional_string),
    ("metrics", "enabled"): (True, _boolean),
    ("log", "level"): ("info", _choice("debug", "info", "warn", "error")),
    ("log", "access"): (True, _boolean),
}

# The namespaces every deployment serves; [[namespaces]] tables in the file add more.
DEFAULT_NAMESPACES = (
    {"path": "/ws/lockers", "default_room": "locker_updates", "require_auth": True},
    {"path": "/ws/help", "default_room": "help_requests", "require_auth": True},
    {"path": "/ws/events", "default_room": "system_events", "require_auth": True},
)


@dataclass(frozen=True)
class NamespaceConfig:
    path: str
    default_room: str | None = None
    require_auth: bool = True
    roles: tuple[str, ...] = ROLES
    echo: bool = False  # test configurations only: send every message back (Autobahn Testsuite)


@dataclass
class Config:
    """Validated settings: `config.get("server", "port")`, plus the namespace list."""

    values: dict[tuple[str, str], Any]
    namespaces: list[NamespaceConfig] = field(default_factory=list)
    source: str | None = None

    def get(self, section: str, key: str) -> Any:
        return self.values[(section, key)]


def _parse_env_value(key: str, raw: str) -> Any:
    """Environment values are strings; read them as TOML literals where they parse."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _namespace(index: int, table: Any) -> NamespaceConfig:
    where = f"namespaces[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {table!r}")
    unknown = set(table) - {"path", "default_room", "require_auth", "roles", "echo"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    path = table.get("path")
    if not isinstance(path, str) or not path.startswith("/ws/") or "/" in path[4:] or len(path) == 4:
        raise ConfigError(f"{where}.path: must look like /ws/<name>, got {path!r}")
    room = table.get("default_room")
    if room is not None:
        _string(f"{where}.default_room", room)
    require_auth = table.get("require_auth", True)
    if not isinstance(require_auth, bool):
        raise ConfigError(f"{where}.require_auth: must be true or false, got {require_auth!r}")
    roles = tuple(_roles(f"{where}.roles", table.get("roles", list(ROLES))))
    echo = table.get("echo", False)
    if not isinstance(echo, bool):
        raise ConfigError(f"{where}.echo: must be true or false, got {echo!r}")
    return NamespaceConfig(path, room, require_auth, roles, echo)


SECTIONS = frozenset(section for section, _ in SCHEMA)
# The EFORMWS_* names eformws reads: one per setting, and the `eformws` command's own.
ENVIRONMENT_NAMES = frozenset(f"EFORMWS_{section}_{key}".upper() for section, key in SCHEMA) | {
    "EFORMWS_URL", "EFORMWS_TOKEN", "EFORMWS_SESSION", "EFORMWS_CACERT",
}

# Keys earlier versions had: still accepted in a file (with a warning), never used.
RETIRED = {
    ("events", "resume_limit"): "a resume now sends every missed event the log still has, at the pace the client reads",
}


def _resolve_backends(values: dict) -> None:
    """`auto` stores are Redis when a Redis URL is set, else SQLite; Redis ones need a URL;
    several workers need Redis to deliver between them."""
    redis = bool(values[("redis", "url")])
    for key in (("sessions", "backend"), ("events", "store")):
        if values[key] == "auto":
            values[key] = "redis" if redis else "sqlite"
        elif values[key] == "redis" and not redis:
            raise ConfigError(f"{key[0]}.{key[1]}: redis needs redis.url")
    if bool(values[("server", "tls_certificate")]) != bool(values[("server", "tls_private_key")]):
        raise ConfigError("server.tls_certificate: TLS needs both server.tls_certificate and server.tls_private_key")
    if values[("server", "workers")] > 1 and not redis:
        raise ConfigError("server.workers: more than 1 worker needs redis.url (workers deliver to each other through Redis)")
    if values[("server", "workers")] > 1 and values[("wamp", "rawsocket_port")] is not None:
        raise ConfigError("wamp.rawsocket_port: the RawSocket port is served by one process; leave it out with "
                          "server.workers above 1")


def _outside_sections(key: str) -> str:
    """The error for `key = value` above every [section] of the file: where it belongs."""
    if key in SECTIONS:
        return f"{key}: must be a table ([{key}] on a line of its own, then its keys)"
    sections = sorted(section for section, name in SCHEMA if name == key)
    if sections:
        where = " or ".join(f"[{section}]" for section in sections)
        return f"{key}: settings go in a section: write {where} on a line above {key} = ..."
    return f"{key}: settings go in a section, and no section has a key {key} (sections: {', '.join(sorted(SECTIONS))})"


def unknown_environment(environ) -> list[str]:
    """EFORMWS_* variables that eformws does not read (a misspelt setting, most likely)."""
    return sorted(name for name in set(environ) - ENVIRONMENT_NAMES
                  if name.startswith("EFORMWS_") and not name.startswith("EFORMWS_TEST_"))


def load_config(
    path: str | None = None,
    overrides: dict[tuple[str, str], Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Defaults, then the file, then `EFORMWS_<SECTION>_<KEY>`, then `overrides`."""
    raw: dict[tuple[str, str], Any] = {}
    namespace_tables: list[Any] = []
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for section, table in document.items():
            if section == "namespaces":
                if not isinstance(table, list):
                    raise ConfigError("namespaces: must be an array of tables ([[namespaces]])")
                namespace_tables = table
                continue
            if not isinstance(table, dict):
                raise ConfigError(_outside_sections(section))
            if section not in SECTIONS:
                raise ConfigError(f"[{section}]: unknown section (sections: {', '.join(sorted(SECTIONS))}, [[namespaces]])")
            for key, value in table.items():
                if (section, key) in RETIRED:
                    log.warn("{key} in {path} is no longer used: {why}", key=f"{section}.{key}", path=path,
                             why=RETIRED[(section, key)])
                    continue
                if (section, key) not in SCHEMA:
                    raise ConfigError(f"{section}.{key}: unknown key")
                raw[(section, key)] = value
    for (section, key), value in raw.items():  # the file's own values, even where an override wins
        SCHEMA[(section, key)][1](f"{section}.{key} in {path}", value)
    environ = os.environ if environ is None else environ
    for (section, key) in SCHEMA:
        name = f"EFORMWS_{section}_{key}".upper()
        if name in environ:
            value = _parse_env_value(name, environ[name])
            SCHEMA[(section, key)][1](f"{section}.{key} from {name}", value)  # even where an option overrides it
            raw[(section, key)] = value
    for name in unknown_environment(environ):
        log.warn("{name} is not a setting of eformws and is ignored (settings: EFORMWS_<SECTION>_<KEY>, "
                 "e.g. EFORMWS_SERVER_PORT)", name=name)
    raw.update(overrides or {})

    values = {}
    for (section, key), (default, check) in SCHEMA.items():
        values[(section, key)] = check(f"{section}.{key}", raw.get((section, key), default))
    _resolve_backends(values)

    namespaces = {ns["path"]: NamespaceConfig(**ns) for ns in DEFAULT_NAMESPACES}
    for index, table in enumerate(namespace_tables):
        ns = _namespace(index, table)
        namespaces[ns.path] = ns
    return Config(values, list(namespaces.values()), path)
