"""The router's serializations (`wamp.2.json`, `wamp.2.msgpack`, `wamp.2.cbor`): frames to
Autobahn messages with each fault classified, messages to frames, and EVENT spliced around
an encoded envelope."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import msgpack
from autobahn.wamp.exception import InvalidUriError
from autobahn.wamp.message import Call, Event, Hello, Publish, Register, Subscribe
from autobahn.wamp.serializer import (
    CBORObjectSerializer,
    CBORSerializer,
    JsonObjectSerializer,
    JsonSerializer,
    MsgPackObjectSerializer,
    MsgPackSerializer,
    Serializer,
)

from eformws.core import wire
from eformws.core.message import Message

MAX_REASON = 200  # characters of a parser's complaint that go into an ABORT
MAX_URI_LENGTH = 512  # `wamp.max_uri_length`'s default

# The URI each message a client may send names something by (what the router looks up or keeps).
_URI_FIELDS = {Hello: "realm", Subscribe: "topic", Publish: "topic", Call: "procedure", Register: "procedure"}


class Undecodable(Exception):
    """A frame that is no valid WAMP message: a protocol violation. `str()` says why, for
    the ABORT to the peer (it may quote the peer's data); `summary` says what, for the log."""

    def __init__(self, reason: str, summary: str | None = None):
        super().__init__(reason)
        self.summary = summary or reason


def _unicode(text: str) -> bool:
    """Whether `text` can be written as UTF-8 (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class BadUri(Exception):
    """A well-formed message with an invalid URI in it; `raw` is the decoded list (so the
    router can answer the request it belongs to)."""

    def __init__(self, raw: list, reason: str):
        super().__init__(reason)
        self.raw = raw


class Codec:
    """One subprotocol: decode a frame into messages, encode a message into a frame. Every
    URI a message names is checked here, the one way in: past `max_uri_length` it is a
    `BadUri`, like a URI Autobahn's parser refuses."""

    subprotocol: str
    binary: bool
    rawsocket_id: int  # its serializer's number in a RawSocket handshake

    def __init__(self, serializer, objects, max_uri_length: int = MAX_URI_LENGTH):
        self._serializer = serializer
        self._objects = objects
        self.max_uri_length = max_uri_length

    def decode(self, payload: bytes, is_binary: bool) -> list:
        if is_binary != self.binary:
            kind = "binary" if is_binary else "text"
            raise Undecodable(f"{kind} frame on subprotocol {self.subprotocol}")
        try:
            raws = self._unserialize(payload)
        except Exception:
            raise Undecodable(f"invalid serialization for {self.subprotocol}") from None
        messages = []
        for raw in raws:
            if type(raw) is not list or not raw or type(raw[0]) is not int:
                raise Undecodable("a WAMP message is an array that starts with an integer type")
            kind = Serializer.MESSAGE_TYPE_MAP.get(raw[0])
            if kind is None:
                raise Undecodable(f"unknown WAMP message type {raw[0]}")
            try:
                message = kind.parse(raw)
            except InvalidUriError as e:
                raise BadUri(raw, str(e)[:MAX_REASON]) from None
            except Exception as e:  # autobahn's ProtocolError, and TypeErrors of odd input
                name = kind.__name__.upper()
                raise Undecodable(f"invalid {name}: {str(e)[:MAX_REASON]}", f"invalid {name}") from None
            field = _URI_FIELDS.get(kind)
            if field is not None:
                uri = getattr(message, field)
                if len(uri) > self.max_uri_length:
                    raise BadUri(raw, f"URI too long: {len(uri)} characters (at most {self.max_uri_length})")
                if not _unicode(uri):
                    # A lone surrogate (a `\ud800` escape): no answer naming it could be written.
                    raise BadUri(raw, "URI is not valid Unicode text")
            messages.append(message)
        return messages

    def _unserialize(self, payload: bytes) -> list:
        return self._objects.unserialize(payload)

    def encode(self, message) -> bytes:
        return self._serializer.serialize(message)[0]

    def envelope(self, message: Message) -> bytes:
        """The envelope alone, as this serialization writes it (once per message)."""
        raise NotImplementedError

    def event(self, subscription: int, publication: int, details: dict, envelope: bytes) -> bytes:
        """EVENT `[36, subscription, publication, details, [envelope]]` around an envelope
        from `envelope()`, byte for byte what the serializer would write for it."""
        raise NotImplementedError


class JsonCodec(Codec):
    subprotocol = "wamp.2.json"
    binary = False
    rawsocket_id = JsonSerializer.RAWSOCKET_SERIALIZER_ID

    def __init__(self, max_uri_length: int = MAX_URI_LENGTH):
        super().__init__(JsonSerializer(), JsonObjectSerializer(), max_uri_length)

    def _unserialize(self, payload: bytes) -> list:
        """Autobahn's decoder (the pure-Python scanner: it turns a string that starts with
        NUL into bytes) only where such a string can be: JSON writes NUL as `\\u0000`.
        Anything else the C decoder reads alike, several times faster."""
        if b"\\u0000" in payload:
            return self._objects.unserialize(payload)
        return [json.loads(payload.decode("utf-8"))]

    def envelope(self, message: Message) -> bytes:
        return message.payload  # compact JSON, shared with legacy connections

    def event(self, subscription, publication, details, envelope) -> bytes:
        return b"[%d,%d,%d,%s,[%s]]" % (Event.MESSAGE_TYPE, subscription, publication, wire.dumps(details), envelope)


class BinaryCodec(Codec):
    """MessagePack and CBOR: EVENT is the header of an array of 5, each field packed, the
    header of an array of 1, then the packed envelope."""

    binary = True
    _ARRAY_5: bytes
    _ARRAY_1: bytes

    @staticmethod
    def pack(value: Any) -> bytes:
        raise NotImplementedError

    def envelope(self, message: Message) -> bytes:
        return self.pack(message.envelope)

    def event(self, subscription, publication, details, envelope) -> bytes:
        pack = self.pack
        return b"".join((self._ARRAY_5, pack(Event.MESSAGE_TYPE), pack(subscription), pack(publication), pack(details),
                         self._ARRAY_1, envelope))


class MsgpackCodec(BinaryCodec):
    subprotocol = "wamp.2.msgpack"
    rawsocket_id = MsgPackSerializer.RAWSOCKET_SERIALIZER_ID
    _ARRAY_5 = b"\x95"  # fixarray of 5 elements
    _ARRAY_1 = b"\x91"

    def __init__(self, max_uri_length: int = MAX_URI_LENGTH):
        super().__init__(MsgPackSerializer(), MsgPackObjectSerializer(), max_uri_length)

    @staticmethod
    def pack(value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)


class CborCodec(BinaryCodec):
    subprotocol = "wamp.2.cbor"
    rawsocket_id = CBORSerializer.RAWSOCKET_SERIALIZER_ID
    _ARRAY_5 = b"\x85"  # array of 5 elements (major type 4)
    _ARRAY_1 = b"\x81"

    def __init__(self, max_uri_length: int = MAX_URI_LENGTH):
        super().__init__(CBORSerializer(), CBORObjectSerializer(), max_uri_length)

    @staticmethod
    def pack(value: Any) -> bytes:
        return cbor2.dumps(value)


def codecs(max_uri_length: int = MAX_URI_LENGTH) -> dict[str, Codec]:
    """Subprotocol -> codec, in the router's order of preference."""
    return {codec.subprotocol: codec
            for codec in (JsonCodec(max_uri_length), MsgpackCodec(max_uri_length), CborCodec(max_uri_length))}
