"""Namespaces, connections and rooms of this process, and `deliver()`: the one way out to
clients, which resolves recipients through room indexes and frames each message once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.logger import Logger
from zope.interface import Attribute, Interface

from eformws.core import metrics
from eformws.core.message import Message, Target
from eformws.core.policy import ROLES
from eformws.delivery.latency import LatencyWindow
from eformws.delivery.redaction import Redactor


class IFraming(Interface):
    """How one kind of transport turns a message into a frame it can send many times. A
    framing is shared by every connection of its kind and is a dict key of the hub's
    frame cache (hashable)."""

    def prepare(message):
        """Return a frame for `message` (the original, or its copy redacted for those who
        may not see sensitive fields), to be handed to `IConnection.send` of every
        recipient with this framing and audience: called once per message, framing and
        audience."""


class IConnection(Interface):
    """One client connection as the hub, shutdown and the session recheck (`SessionWatch`)
    see it: in a namespace's registry and rooms, or an `IEndpoint`'s connections."""

    id = Attribute("connection id (uuid4 string), set when it opens (None before)")
    namespace = Attribute("namespace path, or the path of the endpoint it belongs to (e.g. /wamp)")
    session = Attribute("the Session, or None when anonymous (or not authenticated yet)")
    rooms = Attribute("set of room names this connection is in (empty for an endpoint's connections)")
    framing = Attribute("the IFraming that makes frames for this connection")
    sees_sensitive = Attribute("whether its role may see sensitive fields (else it gets them removed)")
    closed = Attribute("a Deferred (a new one each time it is read) that fires once the connection is "
                       "gone and out of the hub; at once when it already is")

    def send(frame):
        """Hand a frame its framing prepared to the transport (one that may be sent nothing
        more, closing or a slow consumer, drops it)."""

    def close(code, reason):
        """Start closing with a WebSocket close code (any, 1008 and 1013 included) and
        reason."""

    def abort():
        """Drop the transport at once, without a closing handshake (shutdown, when the
        closing handshake did not end within `server.shutdown_timeout`)."""


class IEndpoint(Interface):
    """Connections that are addressed by something other than a namespace's rooms (WAMP
    sessions subscribe to topics): the hub counts and closes them, and asks the endpoint
    which of them get each message it delivers."""

    path = Attribute("where its clients connect, e.g. /wamp (its key in `Hub.endpoints`)")
    connections = Attribute("dict of connection id -> IConnection: those the hub counts and closes")

    def recipients(message):
        """The connections that get `message`, each once (none of them in a namespace)."""


class UnknownNamespace(KeyError):
    pass


class Namespace:
    """A registry entry: its connections by id, and its rooms as sets of connections."""

    __slots__ = ("path", "default_room", "require_auth", "roles", "connections", "rooms", "echo")

    def __init__(self, path: str, default_room: str | None, require_auth: bool, roles: Iterable[str],
                 echo: bool = False):
        self.path = path
        self.echo = echo  # sends every client message back as it came (test configurations only)
        self.default_room = default_room
        self.require_auth = require_auth
        self.roles = frozenset(roles)
        self.connections: dict[str, Any] = {}
        self.rooms: dict[str, set] = {}


class _Frames:
    """The frames of one message, made on first need per (framing, audience). Recipients
    mostly share both, so the last answer is kept at hand."""

    __slots__ = ("message", "redactor", "frames", "last_framing", "last_sees", "last_frame")

    def __init__(self, message: Message, redactor):
        self.message = message
        self.redactor = redactor
        self.frames: dict = {}
        self.last_framing = self.last_sees = self.last_frame = None

    def for_connection(self, connection):
        framing, sees = connection.framing, connection.sees_sensitive
        if framing is self.last_framing and sees is self.last_sees:
            return self.last_frame
        view = self.message if sees else self.message.redacted(self.redactor)
        key = (framing, view is self.message)  # nothing to redact: both audiences share a frame
        frame = self.frames.get(key)
        if frame is None:
            frame = self.frames[key] = framing.prepare(view)
        self.last_framing, self.last_sees, self.last_frame = framing, sees, frame
        return frame


@dataclass(frozen=True)
class Counts:
    """Connections per namespace path and per endpoint path (e.g. /wamp) of one process."""

    namespaces: dict[str, int]
    endpoints: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.namespaces.values()) + sum(self.endpoints.values())


class Hub:
    log = Logger()

    def __init__(self, latency_window: int = 1000, redactor: Redactor | None = None):
        self.redactor = redactor or Redactor(())
        self.namespaces: dict[str, Namespace] = {}
        self.endpoints: dict[str, Any] = {}
        self.latency = LatencyWindow(latency_window)
        self.position = None  # the event log's Position this process has delivered through

    # -- registry -----------------------------------------------------------

    def create_namespace(
        self,
        path: str,
        require_auth: bool = False,
        default_room: str | None = None,
        roles: Iterable[str] = ROLES,
        echo: bool = False,
    ) -> Namespace:
        """Add a namespace (`/ws/<name>`); an existing one is returned unchanged."""
        if not path.startswith("/ws/") or len(path) == 4 or "/" in path[4:]:
            raise ValueError(f"namespace path must look like /ws/<name>, got {path!r}")
        existing = self.namespaces.get(path)
        if existing is not None:
            return existing
        namespace = Namespace(path, default_room, require_auth, roles, echo)
        self.namespaces[path] = namespace
        return namespace

    def namespace(self, path: str) -> Namespace:
        try:
            return self.namespaces[path]
        except KeyError:
            raise UnknownNamespace(path) from None

    def add_endpoint(self, endpoint) -> None:
        """Register an `IEndpoint`: its connections count, close and get messages too."""
        self.endpoints[endpoint.path] = endpoint

    def connections(self) -> Iterable:
        """Every connection of this process: namespaces' and endpoints'."""
        for registry in (*self.namespaces.values(), *self.endpoints.values()):
            yield from list(registry.connections.values())

    def add(self, connection) -> None:
        self.namespace(connection.namespace).connections[connection.id] = connection

    def remove(self, connection) -> None:
        """Forget a connection and take it out of every room at once."""
        namespace = self.namespaces.get(connection.namespace)
        if namespace is None:
            return
        namespace.connections.pop(connection.id, None)
        for room in connection.rooms:
            members = namespace.rooms.get(room)
            if members is not None:
                members.discard(connection)
                if not members:
                    del namespace.rooms[room]
        connection.rooms.clear()

    def join(self, connection, room: str) -> None:
        namespace = self.namespace(connection.namespace)
        namespace.rooms.setdefault(room, set()).add(connection)
        connection.rooms.add(room)

    def leave(self, connection, room: str) -> None:
        namespace = self.namespace(connection.namespace)
        connection.rooms.discard(room)
        members = namespace.rooms.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del namespace.rooms[room]

    # -- counts -------------------------------------------------------------

    def connection_count(self, path: str | None = None) -> int:
        """Connections of one namespace or endpoint (0 when unknown), or of all of them."""
        if path is None:
            return sum(len(r.connections) for r in (*self.namespaces.values(), *self.endpoints.values()))
        registry = self.namespaces.get(path) or self.endpoints.get(path)
        return len(registry.connections) if registry else 0

    def counts(self) -> Counts:
        """This process's connections per namespace and per endpoint, at this moment: the
        one snapshot the status, health, node registry and metrics report from."""
        return Counts(
            {path: len(ns.connections) for path, ns in self.namespaces.items()},
            {path: len(endpoint.connections) for path, endpoint in self.endpoints.items()},
        )

    def get_connection_stats(self) -> dict:
        counts = self.counts()
        return {
            "total_connections": counts.total,
            "namespaces": {
                path: {
                    "connections": counts.namespaces[path],
                    "rooms": {room: len(members) for room, members in ns.rooms.items()},
                }
                for path, ns in self.namespaces.items()
            },
            "endpoints": {path: {"connections": count} for path, count in counts.endpoints.items()},
            "latency_metrics": self.latency_metrics(),
        }

    def latency_metrics(self) -> dict:
        return {**self.latency.percentiles(), "connection_count": self.connection_count()}

    # -- the way out ---------------------------------------------------------

    def recipients(self, target: Target) -> Iterable:
        namespace = self.namespaces.get(target.namespace)
        if namespace is None:
            return ()
        if target.connection_id is not None:
            connection = namespace.connections.get(target.connection_id)
            return (connection,) if connection is not None else ()
        if target.rooms is None:
            return list(namespace.connections.values())
        if len(target.rooms) == 1:
            return list(namespace.rooms.get(target.rooms[0], ()))
        members: set = set()
        for room in target.rooms:
            members.update(namespace.rooms.get(room, ()))
        return members

    def deliver(self, message: Message) -> int:
        """Send `message` to every local recipient once; return how many got it. Each
        distinct (framing, audience) gets one frame: roles that may not see sensitive
        fields share the redacted one."""
        frames = _Frames(message, self.redactor)
        count = 0
        for target in message.targets:
            for connection in self.recipients(target):
                connection.send(frames.for_connection(connection))
                count += 1
        for endpoint in self.endpoints.values():
            for connection in endpoint.recipients(message):
                connection.send(frames.for_connection(connection))
                count += 1
        if count:
            seconds = time.time() - message.created
            self.latency.record(seconds * 1000.0)
            metrics.delivery_latency.observe(seconds)
            metrics.messages_sent.inc(count)
        return count

    def close_all(self, code: int, reason: str) -> None:
        for connection in list(self.connections()):
            connection.close(code, reason)
