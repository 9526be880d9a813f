"""The topic map between the legacy world and WAMP: `eform.<ns>` for namespace broadcasts,
`eform.<ns>.<room>` for what a room gets; URI checks for subscriptions and publications."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from eformws.core.message import Message
from eformws.transports.wamp.errors import INVALID_URI, NO_SUCH_NAMESPACE, WampError

REALM = "eform"
PREFIX = "eform"
NAMESPACE_PATH = "/ws/"

# WAMP "loose" URI components: anything but whitespace, "." and "#".
_COMPONENT = re.compile(r"[^\s.#]+\Z")
_URI = re.compile(r"([^\s.#]+\.)*[^\s.#]+\Z")
_PREFIX_URI = re.compile(r"([^\s.#]+\.)*([^\s.#]*)\Z")
_WILDCARD_URI = re.compile(r"(([^\s.#]+\.)|\.)*([^\s.#]+)?\Z")

EXACT, PREFIX_MATCH, WILDCARD = "exact", "prefix", "wildcard"


@dataclass(frozen=True)
class Topic:
    """A topic a message is published on, with the namespace and room it stands for
    (room None: the namespace-wide broadcast)."""

    uri: str
    namespace: str
    room: str | None


def is_component(value: str) -> bool:
    return bool(_COMPONENT.match(value))


def is_uri(value: object, match: str = EXACT) -> bool:
    """A URI valid for `match`: exact ones have no empty component; a prefix may end in
    one (`eform.`); wildcard patterns may have empty components anywhere (`eform..k1`)."""
    if not isinstance(value, str) or not value:
        return False
    pattern = {EXACT: _URI, PREFIX_MATCH: _PREFIX_URI, WILDCARD: _WILDCARD_URI}[match]
    return bool(pattern.match(value))


def namespace_topic(path: str) -> str | None:
    """`/ws/lockers` -> `eform.lockers`; None for a path that has no topic."""
    if not path.startswith(NAMESPACE_PATH):
        return None
    name = path[len(NAMESPACE_PATH):]
    return f"{PREFIX}.{name}" if is_component(name) else None


def topics_of(message: Message) -> Iterator[Topic]:
    """The topics `message` is published on, in target order, each once. Messages to one
    connection have none; a room whose name is no URI component (it has a `.`, `#` or
    whitespace) has no topic, so WAMP sessions cannot see it."""
    seen = set()
    for target in message.targets:
        if target.connection_id is not None:
            continue
        base = namespace_topic(target.namespace)
        if base is None:
            continue
        if target.rooms is None:
            candidates = ((base, None),)
        else:
            candidates = ((f"{base}.{room}", room) for room in target.rooms if is_component(room))
        for uri, room in candidates:
            if uri not in seen:
                seen.add(uri)
                yield Topic(uri, target.namespace, room)


def target_of(topic: str, namespaces) -> tuple[str, str | None]:
    """The (namespace path, room or None) a PUBLISH topic stands for, or a `WampError`."""
    parts = topic.split(".")
    if parts[0] != PREFIX or len(parts) not in (2, 3) or not all(is_component(p) for p in parts):
        raise WampError(INVALID_URI, f"publish on {PREFIX}.<namespace> or {PREFIX}.<namespace>.<room>, not {topic!r}")
    path = NAMESPACE_PATH + parts[1]
    if path not in namespaces:
        raise WampError(NO_SUCH_NAMESPACE, f"no namespace {path}")
    return path, parts[2] if len(parts) == 3 else None


def wildcard_matches(pattern: tuple[str, ...], components: list[str]) -> bool:
    """A wildcard pattern's components against a topic's: equal length, and each pattern
    component empty (any) or equal."""
    return len(pattern) == len(components) and all(p == "" or p == c for p, c in zip(pattern, components))
