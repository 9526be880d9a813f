"""WAMP over WebSocket on `/wamp`: subprotocol negotiation (`wamp.2.json`, `wamp.2.msgpack`,
`wamp.2.cbor`), origin, admission and the session cookie of the upgrade, frames in and out."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from zope.interface import implementer

from eformws.core.compat import (
    Frame,
    defer_autobahn_option_dump,
    frame_bytes,
    protocol_with_options,
    server_frame,
    use_exact_timers,
    write_now,
    writes_frames_directly,
)
from eformws.delivery.hub import IConnection
from eformws.sessions.credentials import cookie_values
from eformws.transports.gateway import GatewayProtocol
from eformws.transports.origins import origin_allowed
from eformws.transports.wamp.connection import WampConnection


@implementer(IConnection)
class WampProtocol(WampConnection, GatewayProtocol):
    """One WebSocket connection on `/wamp` (what WAMP transports share: `WampConnection`)."""

    transport_type = "websocket"
    prepare_event = staticmethod(Frame)  # an EVENT as one prepared WebSocket frame

    # -- handshake --------------------------------------------------------------------------

    def onConnect(self, request):
        router = self.factory.router
        if not origin_allowed(router.allowed_origins, request.origin):
            raise ConnectionDeny(403, "Origin not allowed")
        for offered in request.protocols:
            codec = router.codecs.get(offered)
            if codec is not None:
                break
        else:
            raise ConnectionDeny(400, f"WAMP needs the subprotocol {' or '.join(router.codecs)}")
        if not self.admit():
            raise ConnectionDeny(503, "Too many connections")
        self._codec = codec
        headers = request.headers
        self.cookies = cookie_values([headers["cookie"]] if "cookie" in headers else [], router.cookie_names)
        return offered

    def onOpen(self):
        self.start_session(self._codec)

    # -- frames in and out ----------------------------------------------------------------------

    def onMessage(self, payload, isBinary):
        self.received(payload, isBinary)

    def write_message(self, payload: bytes) -> None:
        if writes_frames_directly(self):  # what sendMessage writes, minus its per-frame work and debug log
            self._write(server_frame(payload, self._codec.binary))
        else:
            self.sendMessage(payload, self._codec.binary)

    def write_event(self, frame) -> None:
        if writes_frames_directly(self):
            self._write(frame_bytes(frame))
        else:
            self.sendPreparedMessage(frame)

    def _write(self, data: bytes) -> None:
        write_now(self.transport, data)
        self.wrote(len(data))  # counted against the slow-consumer bound, as sendData does

    # -- end -----------------------------------------------------------------------------------

    def onClose(self, wasClean, code, reason):
        self._gone()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._gone()
        self._release()
        self._gone_for_good()


class WampFactory(WebSocketServerFactory):
    protocol = WampProtocol

    def __init__(self, router, options: dict):
        super().__init__(server="eformws")
        use_exact_timers(self)
        self.router = router
        self.setProtocolOptions(**options)
        protocol_with_options(self)
        defer_autobahn_option_dump()
