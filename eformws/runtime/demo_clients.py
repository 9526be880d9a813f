"""The demo's simulated clients, in the gateway's own process: a kiosk per demo kiosk on
/ws/lockers (in its kiosk's room), two staff on /ws/help and a WAMP session that listens to
eform.events.system_events and now and then calls eform.status. Each makes a session of its
own in the gateway's store (never printed or logged) and connects to the gateway's port;
refused or cut off, it logs one line and tries again after a backoff."""

from __future__ import annotations

import random as _random

import txaio
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory, WampWebSocketClientProtocol
from autobahn.wamp.serializer import JsonSerializer
from autobahn.wamp.types import ComponentConfig
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from eformws.client import EformClient, backoff_delay

log = Logger(namespace="eformws.demo")

SESSION_TTL = 7 * 86400  # seconds: every session of the demo, the admin's too
STAFF = ("staff-1", "staff-2")
KIOSK_NAMESPACE = "/ws/lockers"
STAFF_NAMESPACE = "/ws/help"  # the staff panel's help desk (the console is the /ws/events client)
REALM = "eform"
WAMP_TOPIC = "eform.events.system_events"  # every event the demo generates is published there
STATUS_INTERVAL = 15.0  # seconds between the WAMP client's calls of eform.status
CLOSE_TIMEOUT = 5.0  # seconds a closing WAMP connection gets before it is dropped
# How a WAMP session ends when its session is no good: a new session is made before retrying.
WAMP_REFUSALS = frozenset({"wamp.error.not_authorized", "wamp.close.close_realm"})


def client_host(host: str) -> str:
    """Where a client in this process reaches a gateway listening on `host`: the loopback
    address for a wildcard, otherwise that address (an IPv6 one in brackets, for a URL)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class SimulatedClient(Service):
    """What every simulated client does around its connection: make its session in the
    gateway's store, connect, and when the session is refused (or cannot be made) log one
    line and try again with a new session after a backoff (full jitter, as EformClient's);
    on stop, close the connection and cancel whatever is pending."""

    def __init__(self, name: str, sessions, base_url: str, user: str, role: str, kiosk: str | None = None,
                 reactor=None, random=None):
        if reactor is None:
            from twisted.internet import reactor
        self.setName(name)
        self.sessions = sessions
        self.base_url = base_url
        self.user, self.role, self.kiosk = user, role, kiosk
        self.reactor = reactor
        self.random = random or _random.random
        self._session_id: str | None = None  # never logged: it is a credential
        self._creating: Deferred | None = None
        self._retry = None
        self._attempts = 0
        self._connected = False
        self._waiters: list[Deferred] = []

    def when_connected(self) -> Deferred:
        """Fires once the client is connected (at once if it is)."""
        if self._connected:
            return succeed(self)
        d = Deferred()
        self._waiters.append(d)
        return d

    def startService(self):
        super().startService()
        self._begin()

    def stopService(self):
        if not self.running:
            return None  # DemoService stops the clients first, then its children again
        super().stopService()
        self._connected = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._creating is not None:
            self._creating.cancel()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.cancel()
        return self._disconnect()

    def _begin(self) -> None:
        self._retry = None
        if not self.running:
            return
        if self._session_id is not None:
            self._connect(self._session_id)
            return
        d = self._creating = self.sessions.create(self.user, self.role, self.kiosk, SESSION_TTL)
        d.addCallbacks(self._created, self._not_created)

    def _created(self, session) -> None:
        self._creating = None
        self._session_id = session.id
        self._connect(session.id)

    def _not_created(self, failure) -> None:
        self._creating = None
        if self.running:  # else stopService cancelled it
            self._again("its session could not be made", failure.getErrorMessage(), level="warn")

    def _again(self, what: str, reason: str, new_session: bool = False, level: str = "info") -> None:
        """One line, then another try after the backoff (with a new session if asked)."""
        self._connected = False
        if new_session:
            self._session_id = None
        delay = backoff_delay(self._attempts, random=self.random)
        self._attempts += 1
        getattr(log, level)(
            "demo client {client}: {what} ({reason}); {next} in {delay:.2f} s",
            client=self.name, what=what, reason=reason, delay=delay,
            next="a new session and another try" if new_session else "reconnecting",
        )
        self._retry = self.reactor.callLater(delay, self._begin)

    def _up(self) -> None:
        """Connected: the backoff starts over, and whoever waits is told."""
        self._attempts = 0
        self._connected = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    # For subclasses: connect with the session; close (fires once closed).
    def _connect(self, session_id: str) -> None:
        raise NotImplementedError

    def _disconnect(self):
        raise NotImplementedError


class LegacyClient(SimulatedClient):
    """A client of one namespace through eformws.client.EformClient, which reconnects,
    re-joins its rooms and resumes by itself (and logs each reconnection in one line); a
    session it refuses is replaced here."""

    def __init__(self, name: str, sessions, base_url: str, namespace: str, user: str, role: str,
                 kiosk: str | None = None, rooms=(), **kwargs):
        super().__init__(name, sessions, base_url, user, role, kiosk, **kwargs)
        self.namespace = namespace
        self.rooms = tuple(rooms)
        self.client: EformClient | None = None

    def _connect(self, session_id: str) -> None:
        client = self.client = EformClient(self.base_url, self.namespace, session_id, rooms=self.rooms, replay=False,
                                           reactor=self.reactor)
        client.on_connect(lambda _: self._up())
        client.on_disconnect(self._down)
        client.when_closed().addErrback(self._stopped, client)
        client.connect()

    def _down(self, disconnect) -> None:
        self._connected = False  # EformClient has logged it, and reconnects unless it stopped

    def _stopped(self, failure, client: EformClient) -> None:
        """The client stopped by itself: refused (a session revoked or expired) or gave up."""
        if self.client is client:
            self.client = None
        if self.running:
            self._again("refused", str(failure.value), new_session=True, level="warn")

    def _disconnect(self):
        client, self.client = self.client, None
        return client.close() if client is not None else None


class _WampProtocol(WampWebSocketClientProtocol):
    # Never below warn, whatever txaio's global level: Autobahn's debug lines show handshakes.
    log = txaio.make_logger(level="warn")
    opened = False

    def onOpen(self):
        self.opened = True
        super().onOpen()

    def onClose(self, wasClean, code, reason):
        super().onClose(wasClean, code, reason)
        self.factory.owner._closed(self, code, reason)


class _WampSession(ApplicationSession):
    """Joins realm eform with the ticket (a session id), then hands over to its owner."""

    log = txaio.make_logger(level="warn")

    def __init__(self, owner: WampClient, ticket: str):
        super().__init__(ComponentConfig(REALM))
        self.owner = owner
        self._ticket = ticket
        self.left = None  # the CloseDetails of its end, when it ended with GOODBYE or ABORT

    def onConnect(self):
        self.join(REALM, authmethods=["ticket"])

    def onChallenge(self, challenge):
        if challenge.method != "ticket":
            raise ValueError(f"unexpected authentication method {challenge.method}")
        return self._ticket

    def onJoin(self, details):
        self.owner._joined(self)

    def onLeave(self, details):
        # Not Autobahn's: it warns on every reason but a plain close (a shutdown included).
        self.left = details
        self.owner._left(self)
        self.disconnect()


class WampClient(SimulatedClient):
    """A WAMP session over WebSocket (Autobahn's ApplicationSession, JSON), ticket auth with
    its session id: subscribed to `topic`, calling eform.status every `status_interval`
    seconds (first on joining). It reconnects itself: one line per loss, backoff between."""

    def __init__(self, name: str, sessions, base_url: str, user: str, role: str, topic: str = WAMP_TOPIC,
                 status_interval: float = STATUS_INTERVAL, **kwargs):
        super().__init__(name, sessions, base_url, user, role, **kwargs)
        self.topic = topic
        self.status_interval = status_interval
        self.events = 0  # EVENTs received
        self.status: dict | None = None  # the last answer of eform.status
        self._status_waiters: list[Deferred] = []
        self._event_waiters: list[Deferred] = []
        self._connecting: Deferred | None = None
        self._protocol: _WampProtocol | None = None
        self._session: _WampSession | None = None
        self._calls: LoopingCall | None = None
        self._gone: Deferred | None = None  # fires when the transport closed, once stopping
        self._drop = None

    def when_status(self) -> Deferred:
        """Fires with the last answer of eform.status (at once), or the first to come."""
        if self.status is not None:
            return succeed(self.status)
        d = Deferred()
        self._status_waiters.append(d)
        return d

    def when_event(self) -> Deferred:
        """Fires with the envelope of the next EVENT of the subscription."""
        d = Deferred()
        self._event_waiters.append(d)
        return d

    def _url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1).rstrip("/") + "/wamp"

    def _endpoint(self):
        import ipaddress
        from urllib.parse import urlsplit

        from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

        parts = urlsplit(self._url())
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return HostnameEndpoint(self.reactor, parts.hostname, parts.port, timeout=10)
        kind = TCP4ClientEndpoint if literal.version == 4 else TCP6ClientEndpoint
        return kind(self.reactor, parts.hostname, parts.port, timeout=10)

    def _connect(self, session_id: str) -> None:
        def session():
            factory.session = _WampSession(self, session_id)
            return factory.session

        factory = WampWebSocketClientFactory(session, url=self._url(), serializers=[JsonSerializer()],
                                             reactor=self.reactor)
        factory.protocol = _WampProtocol
        factory.owner, factory.session = self, None
        factory.noisy = False  # no "Starting factory" line at every attempt
        factory.setProtocolOptions(openHandshakeTimeout=10.0, closeHandshakeTimeout=CLOSE_TIMEOUT)
        d = self._connecting = self._endpoint().connect(factory)
        d.addCallbacks(self._tcp_connected, self._tcp_failed)

    def _tcp_connected(self, protocol) -> None:
        self._connecting = None
        self._protocol = protocol

    def _tcp_failed(self, failure) -> None:
        self._connecting = None
        if self.running:  # else stopService cancelled it
            self._again("cannot connect", failure.getErrorMessage())

    def _joined(self, session: _WampSession) -> None:
        if not self.running:
            return
        self._session = session
        d = session.subscribe(self._event, self.topic)
        d.addErrback(self._request_failed, session, f"subscribing to {self.topic}")
        self._calls = LoopingCall(self._call_status, session)
        self._calls.clock = self.reactor
        self._calls.start(self.status_interval, now=True)  # never fails: _call_status catches
        self._up()

    def _event(self, *args, **kwargs) -> None:
        self.events += 1
        waiters, self._event_waiters = self._event_waiters, []
        for d in waiters:
            d.callback(args[0] if args else None)

    def _call_status(self, session: _WampSession):
        d = maybeDeferred(session.call, "eform.status")
        d.addCallbacks(self._answered, self._request_failed, errbackArgs=(session, "calling eform.status"))
        return d

    def _answered(self, status) -> None:
        self.status = status
        waiters, self._status_waiters = self._status_waiters, []
        for d in waiters:
            d.callback(status)

    def _request_failed(self, failure, session: _WampSession, what: str) -> None:
        if self.running and self._session is session and session.left is None:
            log.warn("demo client {client}: {what} failed ({reason})", client=self.name, what=what,
                     reason=failure.getErrorMessage())

    def _left(self, session: _WampSession) -> None:
        self._stop_calls()

    def _stop_calls(self) -> None:
        self._session = None
        if self._calls is not None and self._calls.running:
            self._calls.stop()
        self._calls = None

    def _closed(self, protocol: _WampProtocol, code, reason) -> None:
        """The WebSocket closed (or its handshake failed): one line and reconnect, unless stopping."""
        self._stop_calls()
        self._connected = False
        if self._protocol is protocol:
            self._protocol = None
        if self._drop is not None and self._drop.active():
            self._drop.cancel()
        self._drop = None
        if self._gone is not None:
            gone, self._gone = self._gone, None
            gone.callback(None)
        if not self.running:
            return
        session = protocol.factory.session
        left = session.left if session is not None else None
        if left is not None and left.reason != left.REASON_TRANSPORT_LOST:
            refused = left.reason in WAMP_REFUSALS
            detail = f"{left.reason}: {left.message}" if left.message else left.reason
            self._again("refused" if refused else "session ended", detail, new_session=refused,
                        level="warn" if refused else "info")
        elif not protocol.opened:
            status = " ".join((getattr(protocol, "http_status_line", None) or "").split()[1:])
            self._again("cannot connect", f"HTTP {status}" if status else f"{code} {reason or ''}".strip())
        else:
            self._again("connection lost", f"{code} {reason or ''}".strip())

    def _disconnect(self):
        self._stop_calls()
        waiters, self._status_waiters, self._event_waiters = self._status_waiters + self._event_waiters, [], []
        for d in waiters:
            d.cancel()
        if self._connecting is not None:
            self._connecting.cancel()  # _tcp_failed, not running: nothing more
            return None
        protocol = self._protocol
        if protocol is None:
            return None
        d = self._gone = Deferred()
        session = protocol._session
        if session is not None and session.is_attached():
            session.leave()  # GOODBYE, the router's GOODBYE, then the WebSocket closes
        elif protocol.state == protocol.STATE_OPEN:
            protocol.sendClose(1000)
        else:
            protocol.dropConnection(abort=True)
        self._drop = self.reactor.callLater(CLOSE_TIMEOUT * 2, protocol.dropConnection, abort=True)
        return d


class DemoClients(MultiService):
    """The demo's simulated clients, started once the gateway listens: one kiosk per kiosk
    (role kiosk, its kiosk id) on /ws/lockers in its kiosk's room, the staff (role staff) on
    /ws/help, and a WAMP client (role staff)."""

    def __init__(self, sessions, base_url: str, kiosks, staff=STAFF, wamp: bool = True,
                 status_interval: float = STATUS_INTERVAL, reactor=None):
        super().__init__()
        self.kiosks = tuple(kiosks)
        self.staff = tuple(staff)
        for kiosk in self.kiosks:
            LegacyClient(kiosk, sessions, base_url, KIOSK_NAMESPACE, f"demo-{kiosk}", "kiosk", kiosk, rooms=(kiosk,),
                         reactor=reactor).setServiceParent(self)
        for name in self.staff:
            LegacyClient(name, sessions, base_url, STAFF_NAMESPACE, f"demo-{name}", "staff",
                         reactor=reactor).setServiceParent(self)
        self.wamp = None
        if wamp:
            self.wamp = WampClient("wamp", sessions, base_url, "demo-wamp", "staff", status_interval=status_interval,
                                   reactor=reactor)
            self.wamp.setServiceParent(self)

    def when_connected(self) -> Deferred:
        """Fires once every client has connected (fails if the clients stop before)."""
        return gatherResults([client.when_connected() for client in self], consumeErrors=True)

    def stopService(self):
        if not self.running:
            return None  # stopped already (DemoService stops the clients first)
        return super().stopService()
