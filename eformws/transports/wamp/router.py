"""`WampRouter`, the hub endpoint `/wamp`: its joined sessions (counted and closed like any
connection), the broker that tells the hub who gets each message, the dealer, its transports'
entry points (the `/wamp` resource, the RawSocket port's factory)."""

from __future__ import annotations

from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from zope.interface import implementer

from eformws.core.policy import Policy
from eformws.delivery.hub import IEndpoint
from eformws.transports.deflate import decline
from eformws.transports.gateway import protocol_options
from eformws.transports.wamp.broker import Broker
from eformws.transports.wamp.codec import codecs
from eformws.transports.wamp.dealer import Dealer
from eformws.transports.wamp.framing import EventFraming
from eformws.transports.wamp.meta import Meta
from eformws.transports.wamp.permissions import DEFAULT_PERMISSIONS, Permissions
from eformws.transports.wamp.rawsocket import RawSocketFactory
from eformws.transports.wamp.registrations import Registrations
from eformws.transports.wamp.transport import WampFactory

PATH = "/wamp"


def wamp_protocol_options(config) -> dict:
    """Autobahn's options for /wamp: the legacy ones, but messages read up to twice
    `wamp.max_message_bytes`, so that one over the limit (and not past twice it) is read
    and answered (ERROR or ABORT) rather than closing the WebSocket 1009."""
    options = protocol_options(config)
    readable = 2 * config.get("wamp", "max_message_bytes")
    # WAMP sessions are never compressed (their frames are written already serialized).
    options.update(maxFramePayloadSize=readable, maxMessagePayloadSize=readable, perMessageCompressionAccept=decline)
    return options


@implementer(IEndpoint)
class WampRouter:
    path = PATH

    def __init__(
        self,
        hub,
        sessions,
        events,
        status: Callable[[], Any],
        *,
        cookie_names=("sessionId", "session"),
        allowed_origins=frozenset(),
        policy: Policy = Policy(),
        hello_timeout: float = 10.0,
        cra_key: str = "",
        goodbye_timeout: float = 5.0,
        max_unsent_bytes: int = 1_048_576,
        admission=None,
        rate_limit: float = 20.0,
        rate_burst: int = 40,
        rate_limit_close_after: int = 40,
        max_subscriptions: int = 100,
        max_uri_length: int = 512,
        options: dict | None = None,
        permissions: Permissions | None = None,
        max_registrations: int = 100,
        max_message_bytes: int = 1_048_576,
        bus=None,
        registry=None,
        node: str = "",
        peers=None,
        retained_store=None,
    ):
        self.sessions = sessions
        self.cookie_names = tuple(cookie_names)
        self.allowed_origins = frozenset(allowed_origins)
        self.hello_timeout = hello_timeout
        self.cra_key = cra_key  # WAMP-CRA's key (`wamp.cra_key`); empty: not offered
        self.goodbye_timeout = goodbye_timeout
        self.max_unsent_bytes = max_unsent_bytes
        self.policy = policy
        self.admission = admission
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.rate_limit_close_after = rate_limit_close_after
        self.max_message_bytes = max_message_bytes
        self.codecs = codecs(max_uri_length)
        self.permissions = permissions or Permissions.parse(DEFAULT_PERMISSIONS)
        self.broker = Broker(hub, policy, max_subscriptions, publisher=events, permissions=self.permissions,
                             retained_store=retained_store)
        if retained_store is not None:
            retained_store.on_loaded = self.broker.kept_earlier
        self.connections: dict[str, Any] = {}  # joined sessions' transports by connection id
        self.by_session: dict[int, Any] = {}  # the same by WAMP session id
        signal = bus.signal if bus is not None else None
        reachable = (lambda: bus.healthy is not False) if bus is not None else None
        self.registrations = Registrations(self.permissions, max_registrations, registry=registry, node=node,
                                           signal=signal, session=self.by_session.get, reachable=reachable)
        self.meta = Meta(self, events, peers=peers, signal=signal)
        self.broker.on_meta = self.registrations.on_meta = self.meta.event
        self.dealer = Dealer(hub, events, status, policy)
        self.framings = {name: EventFraming(codec, self.broker) for name, codec in self.codecs.items()}
        self._options = options or {}
        self.ping_interval = self._options.get("autoPingInterval", 0)  # /wamp's pings; RawSocket's keepalive
        self.ping_timeout = self._options.get("autoPingTimeout", 0)
        self._resource = None

    @classmethod
    def from_config(cls, config, policy, hub, sessions, events, status, admission=None, bus=None, registry=None,
                    node: str = "", peers=None, retained_store=None):
        """Auth, origins, roles, pings and timeouts as the legacy namespaces have them; who
        may publish and call the admin procedures is `auth.broadcast_roles`; message size,
        rate and counts are the `wamp` section's."""
        return cls(
            hub,
            sessions,
            events,
            status,
            cookie_names=config.get("auth", "cookie_names"),
            allowed_origins=config.get("server", "allowed_origins"),
            policy=policy,
            hello_timeout=config.get("websocket", "open_handshake_timeout"),
            cra_key=config.get("wamp", "cra_key"),
            goodbye_timeout=config.get("websocket", "close_handshake_timeout"),
            max_unsent_bytes=config.get("websocket", "max_unsent_bytes"),
            admission=admission,
            rate_limit=config.get("wamp", "rate_limit"),
            rate_burst=config.get("wamp", "rate_burst"),
            rate_limit_close_after=config.get("wamp", "rate_limit_close_after"),
            max_subscriptions=config.get("wamp", "max_subscriptions"),
            max_uri_length=config.get("wamp", "max_uri_length"),
            options=wamp_protocol_options(config),
            permissions=Permissions.parse(config.get("wamp", "permissions")),
            max_registrations=config.get("wamp", "max_registrations"),
            max_message_bytes=config.get("wamp", "max_message_bytes"),
            bus=bus,
            registry=registry,
            node=node,
            peers=peers,
            retained_store=retained_store,
        )

    # -- IEndpoint ---------------------------------------------------------------------------

    def recipients(self, message):
        return self.broker.recipients(message)

    # -- sessions ------------------------------------------------------------------------------

    def joined(self, connection) -> None:
        self.connections[connection.id] = connection
        self.by_session[connection.wamp.id] = connection
        self.meta.joined(connection)

    def left(self, connection, session_id: int) -> None:
        self.connections.pop(connection.id, None)
        if self.by_session.get(session_id) is connection:
            del self.by_session[session_id]
        self.broker.drop(connection, session_id)
        self.registrations.drop(connection, session_id)
        self.meta.left(connection, session_id)

    def signal(self, payload: dict) -> None:
        """Another process's signal (the bus's `on_signal`): calls, registry changes, the
        meta API's questions and answers."""
        if str(payload.get("kind")).startswith("meta-"):
            self.meta.signal(payload)
        else:
            self.registrations.signal(payload)

    def resource(self) -> WebSocketResource:
        if self._resource is None:
            self._resource = WebSocketResource(WampFactory(self, self._options))
        return self._resource

    def rawsocket_factory(self, reactor=None) -> RawSocketFactory:
        """The protocol factory of the RawSocket port (`wamp.rawsocket_port`): the same
        sessions, auth and limits as `/wamp`."""
        return RawSocketFactory(self, reactor)
