"""permessage-deflate on the legacy namespaces (`websocket.compression`, RFC 7692): offers
accepted with no context takeover both ways, and the framing that deflates a message once
per window size for every connection that negotiated it (not once per connection)."""

from __future__ import annotations

import zlib

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from zope.interface import implementer

from eformws.core.compat import Frame, deflated_frame
from eformws.delivery.hub import IFraming

MIN_DEFLATE_BYTES = 128  # smaller messages go uncompressed (RSV1 clear): deflate saves little there
SYNC_TAIL = b"\x00\x00\xff\xff"


def accept_deflate(offers):
    """Autobahn's `perMessageCompressionAccept` when compression is on: the first
    permessage-deflate offer, the server promising no context takeover (each message
    deflated on its own, so one deflate serves every recipient) and asking the client for
    the same when it allows it (so no decompressor is kept between its messages)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer, request_no_context_takeover=offer.accept_no_context_takeover,
                                                no_context_takeover=True)
    return None


def decline(offers):
    """`perMessageCompressionAccept` when compression is off: every offer declined."""
    return None


@implementer(IFraming)
class DeflateFraming:
    """The envelope as one text frame, deflated with `window_bits` when that makes it smaller.
    One compressor per framing, reset after each message (a full flush): what it writes for
    a message never refers to an earlier one, so any client of that window size inflates it."""

    def __init__(self, window_bits: int):
        self.window_bits = window_bits
        self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)

    def prepare(self, message):
        return self.frame(message.payload, False, message.position)

    def frame(self, payload: bytes, binary: bool = False, position=None) -> Frame:
        if len(payload) < MIN_DEFLATE_BYTES:
            return Frame(payload, binary, position)
        compressor = self._compressor
        deflated = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        if deflated.endswith(SYNC_TAIL):
            deflated = deflated[:-4]
        if len(deflated) >= len(payload):
            return Frame(payload, binary, position)
        return deflated_frame(payload, deflated, binary, position)


_FRAMINGS: dict[int, DeflateFraming] = {}


def deflate_framing(window_bits: int) -> DeflateFraming:
    """The one framing of a window size (9 to 15), shared by every connection that has it."""
    framing = _FRAMINGS.get(window_bits)
    if framing is None:
        framing = _FRAMINGS[window_bits] = DeflateFraming(window_bits)
    return framing
