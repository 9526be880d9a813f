"""Who may publish, subscribe, call and register which application URIs over WAMP: the
`wamp.permissions` table of the configuration. `eform.*` is the router's own and not in it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eformws.core.policy import ROLES
from eformws.transports.wamp.topics import EXACT, PREFIX, PREFIX_MATCH, WILDCARD, is_uri

ACTIONS = ("publish", "subscribe", "call", "register")
MATCHES = (EXACT, PREFIX_MATCH, WILDCARD)
OWN = PREFIX + "."  # the router's own URIs: topics mapped from the namespaces, its procedures
RESERVED = "wamp."  # the WAMP meta API: the router's procedures and events, which the table may open to roles

# The default: admin and staff use `app.*` for everything, their identity disclosed; admin
# may use the meta API; kiosks have only what `eform.*` gives them.
DEFAULT_PERMISSIONS = [
    {"uri": "app.", "match": PREFIX_MATCH, "roles": ["admin", "staff"], "allow": list(ACTIONS), "disclose": True},
    {"uri": RESERVED, "match": PREFIX_MATCH, "roles": ["admin"], "allow": ["call", "subscribe"], "disclose": False},
]


class BadPermission(ValueError):
    """A `wamp.permissions` entry that is wrong; the message names the entry and the key."""


@dataclass(frozen=True)
class Permission:
    """One entry: `roles` may do `allow` on the URIs `uri` covers by `match`; `disclose`:
    their session id, authid and authrole are given to subscribers (of what they publish)
    and callees (of what they call), as Crossbar's `disclose` does: by the router's
    configuration, not by the client's asking."""

    uri: str
    match: str
    roles: frozenset[str]
    allow: frozenset[str]
    disclose: bool

    def covers(self, uri: str) -> bool:
        if self.match == EXACT:
            return uri == self.uri
        if self.match == PREFIX_MATCH:
            return uri.startswith(self.uri)
        return _wildcard(self.uri, uri)

    def overlaps(self, pattern: str, match: str) -> bool:
        """Whether a subscription or registration (`pattern`, `match`) can name a URI this
        entry covers."""
        if match == EXACT:
            return self.covers(pattern)
        if match == PREFIX_MATCH:
            if self.match == PREFIX_MATCH:
                return pattern.startswith(self.uri) or self.uri.startswith(pattern)
            if self.match == EXACT:
                return self.uri.startswith(pattern)
            return True  # a wildcard entry and a prefix: assume they meet (checked again per URI)
        if self.match == EXACT:
            return _wildcard(pattern, self.uri)
        return True  # two patterns: assume they meet (checked again per URI)


    def contains(self, pattern: str, match: str) -> bool:
        """Whether every URI a registration (`pattern`, `match`) can name is one this entry
        covers: a registration takes calls, so it must not reach past what its role may serve."""
        if match == EXACT:
            return self.covers(pattern)
        if self.match == PREFIX_MATCH:
            if match == PREFIX_MATCH:
                return pattern.startswith(self.uri)
            parts = pattern.split(".")  # a wildcard: what it fixes before its first "any" component
            if "" not in parts:
                return self.covers(pattern)  # no "any" component: it names one URI
            fixed = parts[:parts.index("")]
            return bool(fixed) and (".".join(fixed) + ".").startswith(self.uri)
        if self.match == WILDCARD and match == WILDCARD:
            mine, theirs = self.uri.split("."), pattern.split(".")
            return len(mine) == len(theirs) and all(m == "" or m == p for m, p in zip(mine, theirs))
        return False


def _wildcard(pattern: str, uri: str) -> bool:
    parts, components = pattern.split("."), uri.split(".")
    return len(parts) == len(components) and all(p == "" or p == c for p, c in zip(parts, components))


def role_of(connection) -> str | None:
    """The role of a connection's eform session (None before it has one)."""
    session = connection.session
    return session.role if session is not None else None


def is_reserved(uri: str) -> bool:
    """A URI of the WAMP meta API (`wamp.*`): called and subscribed to, as the table allows,
    but never published to or registered by a client."""
    return uri.startswith(RESERVED)


def is_own(uri: str) -> bool:
    """A URI of the router's own (`eform.*`), which the table does not govern."""
    return uri.startswith(OWN)


def may_name_own(pattern: str, match: str) -> bool:
    """Whether a subscription (`pattern`, `match`) can name one of the router's own topics."""
    if match == EXACT:
        return is_own(pattern)
    if match == PREFIX_MATCH:
        return pattern.startswith(OWN) or OWN.startswith(pattern)
    first = pattern.split(".", 1)[0]
    return first in ("", PREFIX) and "." in pattern


class Permissions:
    """The table, asked per action: a role may do an action on a URI when an entry for the
    role covers the URI and allows the action; the first such entry says whether its
    identity is disclosed."""

    def __init__(self, entries: list[Permission]):
        self.entries = tuple(entries)

    @classmethod
    def parse(cls, value: Any, key: str = "wamp.permissions") -> "Permissions":
        """The table from the configuration (a list of tables); BadPermission names `key`,
        the entry and what is wrong."""
        if not isinstance(value, list):
            raise BadPermission(f"{key}: must be an array of tables ([[wamp.permissions]]), got {value!r}")
        return cls([parse_entry(f"{key}[{index}]", entry) for index, entry in enumerate(value)])

    def entry(self, role: str | None, action: str, uri: str) -> Permission | None:
        """The first entry letting `role` do `action` on `uri`, or None."""
        if is_own(uri):
            return None
        for entry in self.entries:
            if role in entry.roles and action in entry.allow and entry.covers(uri):
                return entry
        return None

    def allows(self, role: str | None, action: str, uri: str) -> bool:
        return self.entry(role, action, uri) is not None

    def may_register(self, role: str | None, pattern: str, match: str) -> bool:
        """Whether an entry for the role allows registering and covers every URI the
        registration (`pattern`, `match`) can name."""
        return any(role in entry.roles and "register" in entry.allow and entry.contains(pattern, match)
                   for entry in self.entries)

    def may_ever(self, role: str | None, action: str, pattern: str, match: str) -> bool:
        """Whether a subscription (`pattern`, `match`) can ever be allowed a URI: what
        SUBSCRIBE is refused without (each topic is asked again when an event is delivered)."""
        return any(role in entry.roles and action in entry.allow and entry.overlaps(pattern, match)
                   for entry in self.entries)


def parse_entry(where: str, entry: Any) -> Permission:
    """One `[[wamp.permissions]]` table, checked; BadPermission names what is wrong."""
    if not isinstance(entry, dict):
        raise BadPermission(f"{where}: must be a table, got {entry!r}")
    unknown = set(entry) - {"uri", "match", "roles", "allow", "disclose"}
    if unknown:
        raise BadPermission(f"{where}.{sorted(unknown)[0]}: unknown key (keys: uri, match, roles, allow, disclose)")
    match = entry.get("match", EXACT)
    if match not in MATCHES:
        raise BadPermission(f"{where}.match: must be one of {', '.join(MATCHES)}, got {match!r}")
    uri = entry.get("uri")
    if not is_uri(uri, match):
        raise BadPermission(f"{where}.uri: must be a WAMP URI for {match} match, got {uri!r}")
    if is_own(uri) or (match == PREFIX_MATCH and OWN.startswith(uri)):
        raise BadPermission(f"{where}.uri: {OWN}* is the router's own (namespaces' topics, its procedures); "
                               f"give applications another prefix, e.g. app.")
    roles = entry.get("roles")
    if not isinstance(roles, list) or not roles or not all(role in ROLES for role in roles):
        raise BadPermission(f"{where}.roles: must be a non-empty list of roles ({', '.join(ROLES)}), got {roles!r}")
    allow = entry.get("allow")
    if not isinstance(allow, list) or not allow or not all(action in ACTIONS for action in allow):
        raise BadPermission(f"{where}.allow: must be a non-empty list of {', '.join(ACTIONS)}, got {allow!r}")
    if match == WILDCARD and uri.split(".")[0] == "":
        raise BadPermission(f"{where}.uri: a wildcard entry names its first component (one starting with an "
                            f"empty one would also name {OWN}* and {RESERVED}*)")
    if uri.startswith(RESERVED) and set(allow) - {"call", "subscribe"}:
        raise BadPermission(f"{where}.allow: {RESERVED}* is the WAMP meta API: only call and subscribe")
    disclose = entry.get("disclose", False)
    if not isinstance(disclose, bool):
        raise BadPermission(f"{where}.disclose: must be true or false, got {disclose!r}")
    return Permission(uri, match, frozenset(roles), frozenset(allow), disclose)
