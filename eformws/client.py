"""The Python client of the gateway (Twisted, Autobahn): one namespace with a session, callbacks
per event type, reconnection with capped full-jitter backoff, rooms re-joined and missed events resumed."""

from __future__ import annotations

import heapq
import json
import random as _random
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from eformws.core.backoff import FACTOR, INITIAL_DELAY, MAX_DELAY, backoff_delay
from eformws.core.wampcra import id_hash
from eformws.core.wire import CLOSE_POLICY

__all__ = [
    "ClientError", "Disconnect", "EformClient", "GaveUp", "Refused", "Resumed", "ServerError",
    "backoff_delay", "seq_order", "wampcra_authid", "websocket_url",
]

log = Logger(namespace="eformws.client")

# Reconnection defaults, as Autobahn's Component and Socket.IO's client have them.

# Control messages of the protocol; every other message is an event for the application.
CONTROL_TYPES = frozenset({"connection", "room_joined", "room_left", "pong", "resumed", "error"})
# Refusals that another attempt cannot change: the client stops instead of retrying.
FINAL_CLOSE_REASONS = frozenset(
    {"Authentication required", "Authentication failed", "Forbidden", "Session expired", "Session revoked"}
)
FINAL_HTTP_STATUSES = frozenset({400, 401, 403, 404})
RATE_LIMITED_RETRY = 0.25  # seconds before a request refused `rate_limited` is sent again


def wampcra_authid(session_id: str) -> str:
    """The WAMP-CRA authid of a session (docs/wamp.md, "Authentication"): the hex SHA-256 of
    its id. Its secret is issued with the id (`wampcra` in the answer that created it)."""
    return id_hash(session_id)


def seq_order(seq) -> tuple:
    """A sort key for seqs: decimal integers (within one epoch) compare as numbers; anything
    else (not a seq of this gateway) after them, as text."""
    text = str(seq)
    if text.isascii() and text.isdigit():
        return (0, int(text))
    return (1, text)


def websocket_url(base: str, namespace: str, since: str | None = None, epoch: str | None = None,
                  replay: bool = True) -> str:
    """`ws://host:port/ws/<name>[?since=...[&epoch=...]]` (or `?replay=false`) from a base URL
    (ws, wss, http or https)."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a gateway URL (ws://, wss://, http:// or https://host:port): {base!r}")
    if not namespace.startswith("/"):
        raise ValueError(f"a namespace is a path like /ws/lockers, got {namespace!r}")
    url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{namespace}"
    if since is not None:
        url += "?since=" + quote(str(since), safe="")
        if epoch is not None:
            url += "&epoch=" + quote(str(epoch), safe="")
    elif not replay:
        url += "?replay=false"
    return url


class ClientError(Exception):
    """The client stopped for good: `Refused` or `GaveUp`."""


class Refused(ClientError):
    """The gateway refused this client in a way no retry changes (session, role, namespace)."""


class GaveUp(ClientError):
    """`max_attempts` reconnection attempts in a row failed."""


class ServerError(Exception):
    """The gateway answered a request (join, leave) with an `error` message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _LinkLost(Exception):
    """The connection a request was waiting on ended."""


@dataclass(frozen=True)
class Disconnect:
    """Why a connection ended or an attempt failed, and what the client does next."""

    was_connected: bool  # False: an attempt to connect that failed
    code: int | None  # WebSocket close code (1006 when dropped); None when TCP never connected
    reason: str
    reconnect_in: float | None  # seconds until the next attempt; None: the client stopped


@dataclass(frozen=True)
class Resumed:
    """The outcome of catching up after a reconnection (or from a given `since`)."""

    recovered: bool  # False: events were missed and cannot be sent; reload the state
    count: int  # events delivered while catching up (missed, and live ones meanwhile)
    seq: str | None  # the cursor the client resumes from next time ...
    epoch: str | None = None  # ... and the event log it belongs to


class _Seen:
    """The (epoch, seq) of the last `size` events delivered: duplicates are dropped."""

    def __init__(self, size: int):
        self.size = size
        self._order: deque[str] = deque()
        self._set: set[str] = set()

    def __contains__(self, seq) -> bool:
        return seq in self._set

    def add(self, seq: str) -> None:
        if seq in self._set:
            return
        self._order.append(seq)
        self._set.add(seq)
        if len(self._order) > self.size:
            self._set.discard(self._order.popleft())


class _Request:
    def __init__(self, message: dict, expect: Callable[[dict], bool]):
        self.message = message
        self.expect = expect
        self.deferred = Deferred()


class _Link:
    """One WebSocket connection of the client: what the server says it joined, the
    requests (one outstanding at a time, so an `error` answers the one sent), and the
    events held back while the connection catches up."""

    def __init__(self, client: EformClient, url_since: tuple[str, str | None] | None):
        self.client = client
        self.url_since = url_since  # (seq, epoch) resumed by ?since=, or None
        self.replayed = False  # whether the server replays recent events to this connection
        self.protocol: _ClientProtocol | None = None
        self.opened = False
        self.gone = False
        self.established = False
        self.connection: dict | None = None
        self.joined: set[str] = set()
        self.default_room: str | None = None
        self.pinging = False
        self.url_resumed: dict | None = None
        self.buffer: dict[str, dict] = {}
        self.order: list[tuple] = []  # a heap of (seq order, seq) of what is in `buffer`
        # Catching up, events are delivered at once (the cursor moving with each, so a link
        # lost half-way resumes from there) while what arrives is one stream in seq order
        # covering every room: the ?since= resume of a client with no other room
        # (`streaming`), or the resume of every joined room merged with the live events
        # that came before it (`merging`). Otherwise they wait in `buffer`.
        self.streaming = False
        self.merging = False
        self.delivered = 0  # events delivered at once while catching up
        self._queue: deque[_Request] = deque()
        self._current: _Request | None = None
        self._resend = None
        self._waiters: list[Deferred] = []

    # -- requests -----------------------------------------------------------------

    def request(self, message: dict, expect: Callable[[dict], bool]) -> Deferred:
        """Send `message` when the ones before it are answered; fires with the answer,
        fails with ServerError (an `error` answer) or _LinkLost."""
        if self.gone:
            return _failed(_LinkLost())
        request = _Request(message, expect)
        self._queue.append(request)
        self._next()
        return request.deferred

    def join(self, room: str) -> Deferred:
        return self.request({"type": "join_room", "data": {"room": room}}, _answer("room_joined", room))

    def leave(self, room: str) -> Deferred:
        return self.request({"type": "leave_room", "data": {"room": room}}, _answer("room_left", room))

    def resume(self, since: str, epoch: str | None) -> Deferred:
        data = {"since": since} if epoch is None else {"since": since, "epoch": epoch}
        return self.request({"type": "resume", "data": data}, lambda m: m["type"] == "resumed")

    def _next(self) -> None:
        if self._current is None and self._queue and not self.gone:
            self._current = self._queue.popleft()
            self._send(self._current.message)

    def _send(self, message: dict) -> None:
        self._resend = None
        if not self.gone:
            self.protocol.sendMessage(json.dumps(message).encode("utf-8"), False)

    def answer(self, message: dict) -> bool:
        """Whether `message` answers the outstanding request (which is then done)."""
        current = self._current
        if current is None:
            return False
        if message["type"] == "error":
            data = message.get("data") if isinstance(message.get("data"), dict) else {}
            code, text = str(data.get("code")), str(data.get("message"))
            if code in ("rate_limited", "busy"):  # busy: the replay on connect is still running
                self._resend = self.client._reactor.callLater(RATE_LIMITED_RETRY, self._send, current.message)
                return True
            self._current = None
            current.deferred.errback(ServerError(code, text))
        elif current.expect(message):
            self._current = None
            current.deferred.callback(message)
        else:
            return False
        self._next()
        return True

    # -- waiting ------------------------------------------------------------------

    def wait(self) -> Deferred:
        """A Deferred that fires the next time `wake` is called (fails if the link ends)."""
        d = Deferred()
        if self.gone:
            d.errback(_LinkLost())
        else:
            self._waiters.append(d)
        return d

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def ended(self) -> None:
        self.gone = True
        if self._resend is not None and self._resend.active():
            self._resend.cancel()
        pending = ([self._current] if self._current else []) + list(self._queue)
        self._current, self._queue = None, deque()
        for request in pending:
            request.deferred.errback(_LinkLost())
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(_LinkLost())


def _answer(kind: str, room: str) -> Callable[[dict], bool]:
    def expect(message: dict) -> bool:
        data = message.get("data")
        return message["type"] == kind and isinstance(data, dict) and data.get("room") == room

    return expect


def _failed(error: Exception) -> Deferred:
    d = Deferred()
    d.errback(error)
    return d


class _ClientProtocol(WebSocketClientProtocol):
    # Autobahn logs the handshake request, headers included, at debug level: this logger
    # never goes below warn, whatever txaio's global level, so the session id is never logged.
    log = txaio.make_logger(level="warn")

    def onOpen(self):
        self.factory.link.opened = True

    def onMessage(self, payload, isBinary):
        self.factory.client._received(self.factory.link, payload)

    def onClose(self, wasClean, code, reason):
        status = None
        if not self.factory.link.opened:
            line = getattr(self, "http_status_line", None) or ""
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                status = (int(fields[1]), " ".join(fields[2:]))
        self.factory.client._lost(self.factory.link, code, reason or "", status)


class EformClient:
    """A connection to one namespace that survives network trouble: it reconnects, joins
    its rooms again and resumes from the last seq it delivered, so the callbacks see every
    event once (see docs/client.md)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        session_id: str | None = None,
        *,
        rooms=(),
        default_room: bool = True,
        since: str | None = None,
        epoch: str | None = None,
        replay: bool = True,
        initial_delay: float = INITIAL_DELAY,
        max_delay: float = MAX_DELAY,
        factor: float = FACTOR,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        dedupe_window: int = 10_000,
        tls_options=None,
        reactor=None,
        clock=None,
        random: Callable[[], float] | None = None,
    ):
        websocket_url(url, namespace)  # refuses a bad URL or namespace now, not on connect
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.namespace = namespace
        self._session_id = session_id
        self._rooms: set[str] = set(rooms)  # besides the namespace's default room
        self._in_default = default_room
        self._default_name: str | None = None
        self._cursor = None if since is None else str(since)
        self._epoch = None if since is None or epoch is None else str(epoch)
        self._resume_pending = since is not None  # report the first catching up too
        self._replay = replay
        self._backoff = (initial_delay, max_delay, factor)
        self._max_attempts = max_attempts
        self._connect_timeout = connect_timeout
        self._ping = (ping_interval, ping_timeout)
        self._tls_options = tls_options
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._random = random if random is not None else _random.random
        self._seen = _Seen(dedupe_window)
        self._handlers: dict[str, list[Callable]] = {}
        self._on: dict[str, list[Callable]] = {"connect": [], "disconnect": [], "resumed": []}
        self._state = "idle"  # idle, connecting, connected, waiting, closing, closed
        self._link: _Link | None = None
        self._connecting: Deferred | None = None
        self._retry = None
        self._attempts = 0
        self._outcome: Exception | None = None
        self._when_connected: list[Deferred] = []
        self._when_closed: list[Deferred] = []
        self._join_waiters: dict[str, list[Deferred]] = {}
        self._leave_waiters: dict[str, list[Deferred]] = {}

    # -- the application's side -------------------------------------------------------

    def on(self, event_type: str, callback: Callable[[dict], Any]) -> Callable:
        """Call `callback(envelope)` for every event of `event_type` ("*": every event)."""
        self._handlers.setdefault(event_type, []).append(callback)
        return callback

    def off(self, event_type: str, callback: Callable) -> None:
        self._handlers.get(event_type, []).remove(callback)

    def on_connect(self, callback: Callable[[dict], Any]) -> Callable:
        """`callback(connection)` once connected and caught up, after every reconnection
        too; `connection` is the server's `connection` data (connectionId, namespace, ...)."""
        self._on["connect"].append(callback)
        return callback

    def on_disconnect(self, callback: Callable[[Disconnect], Any]) -> Callable:
        """`callback(Disconnect)` when a connection ends or an attempt to connect fails."""
        self._on["disconnect"].append(callback)
        return callback

    def on_resumed(self, callback: Callable[[Resumed], Any]) -> Callable:
        """`callback(Resumed)` after catching up on a reconnection; `recovered` False means
        events were lost for good (too old, too many, or the store was reset)."""
        self._on["resumed"].append(callback)
        return callback

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def last_seq(self) -> str | None:
        """The cursor: where the next resume starts (persist it, with `last_epoch`, to resume
        across restarts of your process)."""
        return self._cursor

    @property
    def last_epoch(self) -> str | None:
        """The epoch of `last_seq`: the event log it counts in."""
        return self._epoch

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this client is in, or joins again on its next connection."""
        rooms = set(self._rooms)
        if self._in_default and self._default_name is not None:
            rooms.add(self._default_name)
        return frozenset(rooms)

    @property
    def connection_id(self) -> str | None:
        link = self._link
        return link.connection.get("connectionId") if link and link.connection else None

    def connect(self) -> None:
        """Start connecting (and reconnecting until `close()`); `when_connected()` says when
        it is done. Like ClientService.startService, it returns nothing to wait on."""
        if self._state == "idle":
            self._attempt()

    def when_connected(self) -> Deferred:
        """Fires with the client once it is connected and caught up (at once if it is);
        fails with CancelledError on `close()`, with Refused or GaveUp if it stops."""
        if self._state == "connected":
            return succeed(self)
        if self._state == "closed":
            return _failed(self._outcome or CancelledError())
        d = Deferred()
        self._when_connected.append(d)
        return d

    def when_closed(self) -> Deferred:
        """Fires with None once `close()` is done; fails with Refused or GaveUp when the
        client stopped by itself."""
        if self._state == "closed":
            return _failed(self._outcome) if self._outcome else succeed(None)
        d = Deferred()
        self._when_closed.append(d)
        return d

    def join(self, room: str) -> Deferred:
        """Join `room` now and on every later connection. Fires with the room on
        `room_joined`; fails with ServerError when refused (forbidden, room limit, ...)."""
        if self._state in ("closing", "closed"):
            return _failed(CancelledError())
        if room == self._default_name:
            self._in_default = True
        else:
            self._rooms.add(room)
        d = Deferred()
        self._join_waiters.setdefault(room, []).append(d)
        if self._talking():
            self._request_room(self._link, room, join=True)
        return d

    def leave(self, room: str) -> Deferred:
        """Leave `room` (and stay out after reconnecting); fires with the room on
        `room_left`, at once when not connected."""
        if room == self._default_name:
            self._in_default = False
        self._rooms.discard(room)
        if not self._talking():
            return succeed(room)
        d = Deferred()
        self._leave_waiters.setdefault(room, []).append(d)
        self._request_room(self._link, room, join=False)
        return d

    def _talking(self) -> bool:
        """Whether requests can go out now: after the server's `connection` message (our
        first request, a ping, is then already queued) on a connection still up."""
        link = self._link
        return link is not None and link.connection is not None and not link.gone and self._state != "closing"

    def close(self) -> Deferred:
        """Close the connection (1000) and stop reconnecting; fires when closed."""
        if self._state == "closed":
            return succeed(None)
        d = self.when_closed()
        if self._state == "closing":
            return d
        self._state = "closing"
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        link = self._link
        if link is not None and link.protocol is not None and not link.gone:
            protocol = link.protocol
            if protocol.state == protocol.STATE_OPEN:
                protocol.sendClose(1000)
            else:
                protocol.dropConnection(abort=True)
        elif self._connecting is not None:
            self._connecting.cancel()  # the TCP connect fails with CancelledError: _finish
        else:
            self._finish(None)
        return d

    # -- connecting ---------------------------------------------------------------

    def _url_since(self) -> tuple[str, str | None] | None:
        """What the next connection resumes the default room from with `?since=`: the
        cursor, or None."""
        if self._in_default and self._cursor is not None:
            return self._cursor, self._epoch
        return None

    def _wants_replay(self) -> bool:
        """Only a first connection in the default room, unless `replay=False`."""
        return self._replay and self._in_default and self._cursor is None

    def _endpoint(self, url: str):
        import ipaddress

        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            wrapClientTLS,
        )

        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            literal = None  # a name: resolved, each address tried (HostnameEndpoint)
        if literal is None:
            endpoint = HostnameEndpoint(self._reactor, parts.hostname, port, timeout=self._connect_timeout)
        else:
            kind = TCP4ClientEndpoint if literal.version == 4 else TCP6ClientEndpoint
            endpoint = kind(self._reactor, parts.hostname, port, timeout=self._connect_timeout)
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(self._tls_options or optionsForClientTLS(parts.hostname), endpoint)
        return endpoint

    def _attempt(self) -> None:
        self._retry = None
        self._state = "connecting"
        link = self._link = _Link(self, self._url_since())
        link.replayed = link.url_since is None and self._wants_replay()
        link.streaming = link.url_since is not None and not self._rooms
        url = websocket_url(self.url, self.namespace, *(link.url_since or (None, None)), replay=link.replayed)
        headers = {"Authorization": f"Bearer {self._session_id}"} if self._session_id else {}
        factory = WebSocketClientFactory(url, headers=headers, useragent="eformws-client", reactor=self._reactor)
        factory.protocol = _ClientProtocol
        factory.noisy = False  # no "Starting factory" line per attempt: the client logs its own
        factory.client, factory.link = self, link
        ping_interval, ping_timeout = self._ping
        factory.setProtocolOptions(
            openHandshakeTimeout=self._connect_timeout,
            closeHandshakeTimeout=5.0,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
        )
        d = self._connecting = self._endpoint(url).connect(factory)
        d.addCallbacks(self._tcp_connected, self._tcp_failed, callbackArgs=(link,), errbackArgs=(link,))

    def _tcp_connected(self, protocol, link: _Link) -> None:
        self._connecting = None
        link.protocol = protocol

    def _tcp_failed(self, failure, link: _Link) -> None:
        self._connecting = None
        link.ended()
        if self._state == "closing":
            self._finish(None)
            return
        error = failure.value
        reason = type(error).__name__ if isinstance(error, CancelledError) else (failure.getErrorMessage() or type(error).__name__)
        self._failed(Disconnect(False, None, reason, None))

    def _lost(self, link: _Link, code: int | None, reason: str, status) -> None:
        """The connection of `link` ended (after or during the WebSocket handshake)."""
        link.ended()
        was_connected = link.established
        self._flush_unsent_waiters()
        if status is not None:
            reason = f"HTTP {status[0]} {status[1]}".rstrip()
        if self._state == "closing":
            self._notify_disconnect(Disconnect(was_connected, code, reason, None))
            self._finish(None)
            return
        final = None
        if status is not None and status[0] in FINAL_HTTP_STATUSES:
            final = Refused(f"the gateway refused the connection: {reason}")
        elif code == CLOSE_POLICY and reason in FINAL_CLOSE_REASONS:
            final = Refused(f"the gateway refused the session: {reason}")
        disconnect = Disconnect(was_connected, code, reason, None)
        if final is not None:
            log.warn("{namespace}: {reason}; not reconnecting", namespace=self.namespace, reason=str(final))
            self._notify_disconnect(disconnect)
            self._finish(final)
            return
        self._failed(disconnect)

    def _failed(self, disconnect: Disconnect) -> None:
        """Schedule the next attempt (or give up), then tell the application."""
        if self._max_attempts is not None and self._attempts >= self._max_attempts:
            log.warn("{namespace}: giving up after {attempts} reconnection attempts ({reason})",
                     namespace=self.namespace, attempts=self._attempts, reason=disconnect.reason)
            self._notify_disconnect(disconnect)
            self._finish(GaveUp(f"gave up after {self._attempts} reconnection attempts: {disconnect.reason}"))
            return
        initial, maximum, factor = self._backoff
        delay = backoff_delay(self._attempts, initial, maximum, factor, self._random)
        self._attempts += 1
        self._state = "waiting"
        self._retry = self._clock.callLater(delay, self._attempt)
        log.info(
            "{namespace}: {what} ({reason}); reconnecting in {delay:.2f} s",
            namespace=self.namespace,
            what="connection lost" if disconnect.was_connected else "cannot connect",
            reason=disconnect.reason,
            delay=delay,
        )
        self._notify_disconnect(Disconnect(disconnect.was_connected, disconnect.code, disconnect.reason, delay))

    def _flush_unsent_waiters(self) -> None:
        """Leaves waiting on a connection that ended are done: the server forgot us."""
        waiters, self._leave_waiters = self._leave_waiters, {}
        for room, ds in waiters.items():
            for d in ds:
                d.callback(room)

    def _finish(self, outcome: Exception | None) -> None:
        self._state = "closed"
        self._outcome = outcome
        self._link = None
        self._flush_unsent_waiters()
        joins, self._join_waiters = self._join_waiters, {}
        for d in [d for ds in joins.values() for d in ds] + self._take(self._when_connected):
            d.errback(outcome or CancelledError())
        for d in self._take(self._when_closed):
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)

    @staticmethod
    def _take(waiters: list) -> list:
        taken = list(waiters)
        waiters.clear()
        return taken

    # -- messages -----------------------------------------------------------------

    def _received(self, link: _Link, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warn("{namespace}: a message that is not JSON was ignored", namespace=self.namespace)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            log.warn("{namespace}: a message without a type was ignored", namespace=self.namespace)
            return
        kind = message["type"]
        if kind not in CONTROL_TYPES:
            self._event(link, message)
            return
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if kind == "connection":
            if link.connection is None:
                link.connection = data
                d = ensureDeferred(self._establish(link))
                d.addErrback(self._establish_failed, link)
            return
        if kind == "room_joined":
            room = data.get("room")
            link.joined.add(room)
            if not link.answer(message) and link.pinging and link.default_room is None:
                link.default_room = room  # sent before the answer to our first ping
            for d in self._join_waiters.pop(room, []):
                d.callback(room)
            return
        if kind == "room_left":
            room = data.get("room")
            link.joined.discard(room)
            link.answer(message)
            for d in self._leave_waiters.pop(room, []):
                d.callback(room)
            return
        if link.answer(message):
            return
        if kind == "resumed" and link.url_resumed is None:
            link.url_resumed = data  # the answer to ?since= on the URL
            link.streaming = False
            link.wake()
        elif kind == "error":
            log.warn("{namespace}: the gateway reported {code}: {message}", namespace=self.namespace,
                     code=data.get("code"), message=data.get("message"))

    def _event(self, link: _Link, envelope: dict) -> None:
        if self._state == "closing":
            return  # close() was called: no more callbacks
        seq = envelope.get("seq")
        if not link.established and seq is not None:
            if link.merging:
                order = seq_order(seq)
                while link.order and link.order[0][0] < order:
                    held = link.buffer.pop(heapq.heappop(link.order)[1])
                    link.delivered += self._deliver(held)
            elif not link.streaming:
                if str(seq) not in link.buffer:  # delivered in seq order once caught up
                    link.buffer[str(seq)] = envelope
                    heapq.heappush(link.order, (seq_order(seq), str(seq)))
                return
            link.delivered += self._deliver(envelope)
            return
        self._deliver(envelope)

    def _deliver(self, envelope: dict) -> bool:
        seq = envelope.get("seq")
        if seq is not None:
            seq, epoch = str(seq), envelope.get("epoch")
            key = f"{epoch} {seq}"
            if key in self._seen:
                return False
            self._seen.add(key)
            self._cursor, self._epoch = seq, epoch
        callbacks = self._handlers.get(envelope["type"], []) + self._handlers.get("*", [])
        for callback in callbacks:
            self._call(callback, envelope, what=f"the {envelope['type']!r} event")
        return True

    def _call(self, callback, *args, what: str) -> None:
        try:
            callback(*args)
        except Exception:
            log.failure("{namespace}: a callback for {what} raised", namespace=self.namespace, what=what)

    def _notify_disconnect(self, disconnect: Disconnect) -> None:
        for callback in list(self._on["disconnect"]):
            self._call(callback, disconnect, what="disconnect")

    # -- catching up on a new connection ---------------------------------------------

    async def _establish(self, link: _Link) -> None:
        """Learn the default room, join the rooms, resume what the URL did not, then
        deliver what was held back in seq order and tell the application."""
        try:
            link.pinging = True
            marker = uuid.uuid4().hex
            await link.request(
                {"type": "ping", "data": {"timestamp": marker}},
                lambda m: m["type"] == "pong" and isinstance(m.get("data"), dict) and m["data"].get("timestamp") == marker,
            )
            link.pinging = False
            default = link.default_room
            if default is not None:
                self._default_name = default
                if default in self._rooms:  # joined by name before it was known as the default
                    self._rooms.discard(default)
                    self._in_default = True
                if link.url_since is not None:
                    while link.url_resumed is None:
                        await link.wait()
                if not self._in_default:
                    await link.leave(default)
            while self._rooms - link.joined:  # join() during this loop adds to _rooms
                for room in sorted(self._rooms - link.joined):
                    try:
                        await link.join(room)
                    except ServerError as e:
                        self._refused_room(room, e)
            answers = []  # (resumed's data, whether it answers the client's own cursor)
            if link.url_resumed is not None:
                answers.append((link.url_resumed, True))
            start = link.connection or {}
            covered = {default} if link.url_since is not None else set()
            if self._cursor is not None and link.joined - covered:
                link.merging = True  # this resume covers every joined room from the cursor
                answer = await link.resume(self._cursor, self._epoch)
                answers.append((answer.get("data") if isinstance(answer.get("data"), dict) else {}, True))
            elif link.replayed and start.get("seq") is not None:
                # Resuming from where this connection started finds nothing new, and is
                # answered only once the server's replay is sent (`busy` until then): all
                # of the replay is then held here, to be delivered in order.
                answer = await link.resume(start["seq"], start.get("epoch"))
                answers.append((answer.get("data") if isinstance(answer.get("data"), dict) else {}, False))
        except _LinkLost:
            return
        self._established(link, answers)

    def _refused_room(self, room: str, error: ServerError) -> None:
        log.warn("{namespace}: could not join room {room} again: {error}", namespace=self.namespace, room=room, error=str(error))
        self._rooms.discard(room)
        for d in self._join_waiters.pop(room, []):
            d.errback(error)

    def _established(self, link: _Link, answers: list) -> None:
        """Caught up: deliver what was held (seq order, no duplicate), move the cursor,
        then `on_resumed`, `on_connect` and `when_connected()`, in that order."""
        link.established = True
        if self._state == "closing":
            return  # close() was called from a callback of an event delivered while catching up
        self._state = "connected"
        self._attempts = 0
        reported = [data for data, own in answers if own]
        answers = [data for data, _ in answers]
        recovered = all(data.get("recovered") is True for data in answers)
        start = link.connection or {}
        epoch = start.get("epoch")
        if not recovered:
            # The history is broken here (too old, too many, or another event log): what
            # the server sent instead is delivered, old seqs are forgotten.
            self._seen = _Seen(self._seen.size)
            self._cursor = self._epoch = None
        held = sorted(link.buffer.values(), key=lambda e: seq_order(e["seq"]))
        link.buffer, link.order = {}, []
        count = link.delivered + sum(1 for envelope in held if self._deliver(envelope))
        # Where the server says live delivery goes on from, when beyond the last event: the
        # cursor moves there (in the connection's event log).
        positions = [str(data["seq"]) for data in answers if data.get("seq") is not None and data.get("epoch") == epoch]
        if start.get("seq") is not None:
            positions.append(str(start["seq"]))
        if positions:
            newest = max(positions, key=seq_order)
            if self._cursor is None or self._epoch != epoch or seq_order(newest) > seq_order(self._cursor):
                self._cursor, self._epoch = newest, epoch
        log.info("{namespace}: connected; rooms {rooms}", namespace=self.namespace, rooms=sorted(self.rooms))
        if reported or self._resume_pending:
            self._resume_pending = False
            if not recovered:
                log.warn("{namespace}: events were missed and cannot be resumed", namespace=self.namespace)
            resumed = Resumed(recovered, count, self._cursor, self._epoch)
            for callback in list(self._on["resumed"]):
                if self._state == "connected":
                    self._call(callback, resumed, what="resumed")
        for callback in list(self._on["connect"]):
            if self._state == "connected":
                self._call(callback, dict(link.connection or {}), what="connect")
        if self._state == "connected":
            for d in self._take(self._when_connected):
                d.callback(self)

    def _establish_failed(self, failure, link: _Link) -> None:
        log.failure("{namespace}: catching up on a new connection failed", failure, namespace=self.namespace)
        if link.protocol is not None and not link.gone:
            link.protocol.dropConnection(abort=True)

    def _request_room(self, link: _Link, room: str, join: bool) -> None:
        d = link.join(room) if join else link.leave(room)

        def refused(failure):
            if failure.check(ServerError):
                if join:
                    self._refused_room(room, failure.value)
                else:
                    for waiter in self._leave_waiters.pop(room, []):
                        waiter.errback(failure.value)
            # _LinkLost: a join is made again on the next connection; a leave is done

        d.addCallbacks(lambda _: None, refused)
