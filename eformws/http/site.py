"""The HTTP site on the one port: the resource tree, request bodies bounded in memory and in
time, HTTP connections bounded in number, and an access log that never writes a query
string (it may hold a session id)."""

from __future__ import annotations

import re
from urllib.parse import unquote

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from eformws.core import wire
from eformws.core.compat import drop_pipelined_requests, has_pipelined_requests
from eformws.core.slow_consumer import unsent_bytes

# Twisted's own idle timeout (reset by every byte, off while a request is being answered)
# stays as a backstop; the deadlines of `DeadlineChannel` are the bound that holds.
IDLE_TIMEOUT = 60.0
UNREAD_RESPONSES_BOUND = 1_048_576  # bytes of answers a client may leave unread before its next request
REFUSAL_LINGER = 1.0  # seconds a refused connection is read (and dropped) after its 503 ...
REFUSALS_LINGERING = 64  # ... for at most this many at once; past that it is closed at once


def _error_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the API's error body; the connection closes after it."""
    body = wire.dumps({"statusCode": status, "error": reason, "message": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


SESSIONS_PATH = "/api/websocket/sessions/"
HEX_REFERENCE = re.compile(r"[0-9A-Fa-f]{8,64}")


MAX_LOGGED_PATH = 1000  # characters of a path a log line keeps


def logged_path(path: str) -> str:
    """The path as the access log writes it. Anything after /api/websocket/sessions/ (found
    anywhere in the path, in any case, with any run of slashes, percent-encoded or not, as
    the router decodes it and more) that is not a reference (a session id sent by mistake,
    say) is written `<not a reference>`; a path longer than MAX_LOGGED_PATH is cut there."""
    decoded = path
    for _ in range(3):  # %2573 is %73 once decoded: look through a few layers
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    folded = re.sub("/+", "/", decoded).lower()
    at = folded.find(SESSIONS_PATH)
    if at >= 0 and not HEX_REFERENCE.fullmatch(folded[at + len(SESSIONS_PATH):]):
        return folded[:at] + SESSIONS_PATH + "<not a reference>"
    if len(path) > MAX_LOGGED_PATH:
        return f"{path[:MAX_LOGGED_PATH]}... ({len(path)} characters)"
    return path


ACCESS_LINE = '{client} "{method} {path}" {status} {size}'
access_log = Logger(namespace="eformws.http.access")


class BoundedRequest(Request):
    """Keeps at most `max_body_bytes` of a body; past that it sets `body_too_large` and
    drops the rest, so a large body costs no memory and is answered 413."""

    max_body_bytes = 65536

    def gotLength(self, length):
        self.body_too_large = length is not None and length > self.max_body_bytes
        self._body_received = 0
        super().gotLength(None if self.body_too_large else length)
        if self.body_too_large:
            self.channel.refuse_large_body()

    def handleContentChunk(self, data):
        self._body_received += len(data)
        if self._body_received > self.max_body_bytes and not self.body_too_large:
            self.body_too_large = True
            self.channel.refuse_large_body()  # at once: a body of 1-byte chunks costs CPU per chunk
        if not self.body_too_large:
            super().handleContentChunk(data)


class Root(Resource):
    """`/ws/<name>` to the namespace registry; `/wamp` to the WAMP router; other mounted
    resources by their first path segment (`/metrics`, the console); every other path to
    the HTTP API, which routes on the whole path."""

    def __init__(self, api_resource, namespaces_resource, wamp_resource=None, mounted=None):
        super().__init__()
        self._api = api_resource
        self._namespaces = namespaces_resource
        self._wamp = wamp_resource
        self._mounted = dict(mounted or {})

    def getChildWithDefault(self, name, request):
        if name == b"ws":
            return self._namespaces
        if name == b"wamp" and self._wamp is not None and not request.postpath:
            return self._wamp
        mounted = self._mounted.get(name)
        if mounted is not None:
            return mounted
        request.postpath.insert(0, request.prepath.pop())
        return self._api

    def render(self, request):
        return self._api.render(request)


class DeadlineChannel(HTTPChannel):
    """An HTTP/1.1 connection whose requests must arrive in time: the whole head within
    `site.head_timeout` seconds, counted from the connection's opening or, on a keep-alive
    connection, from the end of the previous response; a body by `head_timeout` plus its
    length (`Content-Length`, or `max_body_bytes` when chunked, never more than that) over
    `site.min_body_rate`, from the same start. Past the deadline a request partly received
    is answered 408 and the connection closed; an idle connection (nothing of a next request
    yet) is closed without an answer. No deadline runs while a request is being answered,
    nor ever after a WebSocket upgrade (the connection is then Autobahn's, and no longer
    counted here). Timers use the channel's `callLater`, the site's reactor."""

    _log = Logger()
    _deadline = None  # the pending DelayedCall of the current deadline
    _began = 0.0  # when the current request's time started
    _receiving = False  # bytes of a request have come and it is not complete yet
    _closing = False  # the last response closes the connection, or a deadline closed it
    _counted = False  # counted in `site.http_connections`

    def connectionMade(self):
        super().connectionMade()
        self._await_request()

    def _now(self) -> float:
        return self.site.reactor.seconds()

    def _await_request(self, receiving: bool = False) -> None:
        self._began = self._now()
        self._receiving = receiving
        self._arm(self.site.head_timeout)

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._deadline = self.callLater(max(0.0, delay), self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data):
        if data and not self._handlingRequest:
            self._receiving = True
        super().dataReceived(data)

    def allHeadersReceived(self):
        super().allHeadersReceived()
        if self.length != 0 and self._deadline is not None:  # a body follows: its share of time
            site = self.site
            size = site.max_body_bytes if self.length is None else min(self.length, site.max_body_bytes)
            self._arm(self._began + site.head_timeout + size / site.min_body_rate - self._now())

    def allContentReceived(self):
        self._disarm()
        self._receiving = False
        transport = self.transport
        super().allContentReceived()
        if self.transport is None:
            # WebSocketResource.render took the transport over (request.channel.transport =
            # None): from now on the WebSocket admission counts the connection. The transport
            # must not keep this channel (and the upgrade request) as its producer for the
            # WebSocket's life: about 5 KiB a connection.
            self._release()
            if getattr(transport, "producer", None) is self:
                transport.unregisterProducer()

    def refuse_large_body(self) -> None:
        """A body over `max_body_bytes` (declared or received): 413 now, nothing more read."""
        if self.transport is None or self._closing:
            return
        self._disarm()
        self._closing = True
        self.transport.pauseProducing()
        self.transport.write(self.site.too_large_response)
        self.setTimeout(None)
        self.transport.loseConnection()
        self._abortingCall = self.callLater(self.abortTimeout or 15, self.forceAbortClient)

    def requestDone(self, request):
        if self.transport is not None and unsent_bytes(self.transport) > UNREAD_RESPONSES_BOUND:
            # Pipelined requests whose answers the client does not read: dropped, with the
            # requests it sent and the answers it left.
            self._log.info("HTTP client from {peer} does not read its answers: dropped",
                           peer=self.transport.getPeer().host)
            drop_pipelined_requests(self)
            self._closing = True
            self.transport.abortConnection()
        # Before super(): it may parse a pipelined request that was buffered meanwhile.
        self._closing = self._closing or not self.persistent
        self._await_request(receiving=has_pipelined_requests(self))
        super().requestDone(request)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport is None or self._handlingRequest:
            return
        if self._closing:  # closing after its last response, which the client does not take
            self.transport.abortConnection()
            return
        if self._receiving:
            self._log.info(
                "HTTP request from {peer} not received in time: answered 408", peer=self.transport.getPeer().host
            )
            self.transport.write(self.site.timeout_response)
        self._closing = True
        self.setTimeout(None)
        self.loseConnection()
        if self.abortTimeout is not None:  # a client that does not take the 408 goes too
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.site.http_connections -= 1

    def connectionLost(self, reason):
        self._disarm()
        self._release()
        super().connectionLost(reason)


class Refusal(Protocol):
    """A connection past `server.max_http_connections`: the site's fixed 503, nothing parsed.
    The write side is closed after it and what the client sends is read and dropped until it
    closes (closing a socket with unread input resets it, which can discard the 503 before
    the client reads it), for at most `REFUSAL_LINGER` seconds (with TLS: the handshake, the
    503, the close) and `REFUSALS_LINGERING` at once; past that the connection is aborted."""

    _linger = None

    def connectionMade(self):
        site = self.factory
        if site.refusals_lingering >= REFUSALS_LINGERING:
            self.transport.abortConnection()
            return
        site.refusals_lingering += 1
        self._linger = site.reactor.callLater(REFUSAL_LINGER, self.transport.abortConnection)
        self.transport.write(site.busy_response)
        if ITCPTransport.providedBy(self.transport) and not isinstance(self.transport, ProtocolWrapper):
            self.transport.loseWriteConnection()
        else:  # TLS (whose wrapper would pass a half-close to the TCP connection under it)
            self.transport.loseConnection()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        if self._linger is not None:
            self.factory.refusals_lingering -= 1
            if self._linger.active():
                self._linger.cancel()
            self._linger = None


class GatewaySite(Site):
    """The Site with `DeadlineChannel` connections, at most `max_http_connections` of them
    from accept to close or to a WebSocket upgrade; past that a connection gets `Refusal`."""

    protocol = DeadlineChannel

    def __init__(self, resource, max_http_connections: int, head_timeout: float, min_body_rate: float,
                 max_body_bytes: int, access: bool = True, **kwargs):
        super().__init__(resource, **kwargs)
        self.access = access
        self.max_http_connections = max_http_connections
        self.head_timeout = head_timeout
        self.min_body_rate = min_body_rate
        self.max_body_bytes = max_body_bytes
        self.http_connections = 0  # DeadlineChannels open and not upgraded
        self.refusals_lingering = 0
        self.timeout_response = _error_response(
            408, "Request Timeout",
            f"the request must arrive within {head_timeout:g} s (its head) and its body at "
            f"{min_body_rate:g} bytes/s or more",
        )
        self.busy_response = _error_response(503, "Service Unavailable", "Too many HTTP connections; try again")
        self.too_large_response = _error_response(413, "Payload Too Large", f"body must be at most {max_body_bytes} bytes")

    def log(self, request) -> None:
        """The access line of an answered request (`log.access`): an event with fields
        (client, method, path without its query, status, size; never a header or the query),
        formatted only by an observer that writes it. (An upgraded request never finishes,
        so a WebSocket connection has no access line.)"""
        if not self.access:
            return
        access_log.info(ACCESS_LINE, client=request.getClientAddress().host,
                        method=request.method.decode("latin-1", "replace"),
                        path=logged_path(request.path.decode("latin-1", "replace")), status=request.code,
                        size=request.sentLength)

    def buildProtocol(self, addr):
        if self.http_connections >= self.max_http_connections:
            refusal = Refusal()
            refusal.factory = self
            return refusal
        channel = super().buildProtocol(addr)
        self.http_connections += 1
        channel._counted = True
        return channel


def build_site(api_resource, namespaces_resource, max_body_bytes: int, wamp_resource=None, mounted=None,
               max_http_connections: int = 1024, head_timeout: float = 10.0, min_body_rate: float = 4096,
               access: bool = True, reactor=None) -> Site:
    """`mounted`: {b"segment": resource} served beside the API (`/metrics`, the console);
    `reactor`: the clock of the connections' deadlines (the global reactor by default)."""
    class SiteRequest(BoundedRequest):
        pass

    SiteRequest.max_body_bytes = max_body_bytes
    site = GatewaySite(
        Root(api_resource, namespaces_resource, wamp_resource, mounted),
        max_http_connections,
        head_timeout,
        min_body_rate,
        max_body_bytes,
        access,
        parsePOSTFormSubmission=False,  # the API reads JSON bodies: no form parsing per POST
        timeout=IDLE_TIMEOUT,
        reactor=reactor,
    )
    site.requestFactory = SiteRequest
    site.displayTracebacks = False
    return site
