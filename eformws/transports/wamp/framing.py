"""How the hub's one-frame-per-message reaches WAMP sessions: per serialization, the
envelope is encoded once and each matched subscription's EVENT framed once for all its sessions."""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from eformws.core.compat import Frame
from eformws.delivery.hub import IFraming

log = Logger(namespace="eformws.wamp")


@implementer(IFraming)
class EventFraming:
    """The IFraming of every WAMP session that speaks one serialization."""

    def __init__(self, codec, broker):
        self.codec = codec
        self._broker = broker

    def prepare(self, message):
        return EventFrame(self.codec, self._broker.delivery_of(message), message)


class EventFrame:
    """One message, as one audience sees it (`message`: the original or its redacted copy),
    for the sessions of one serialization. `events_for(connection)` are the prepared EVENTs
    that connection gets, one per subscription of its that matched; the EVENT of a
    (subscription, topic) is built on first use and shared by every subscriber."""

    __slots__ = ("_codec", "_delivery", "_message", "_envelope", "_events")

    def __init__(self, codec, delivery, message):
        self._codec = codec
        self._delivery = delivery
        self._message = message
        self._envelope: bytes | None = None
        self._events: dict[tuple[int, str], Frame] = {}

    def events_for(self, connection) -> list[Frame]:
        matched = self._delivery.matches.get(connection)
        if not matched:
            return []
        if self._envelope is None:
            try:
                self._envelope = self._codec.envelope(self._message)
            except (OverflowError, TypeError, ValueError) as e:
                # e.g. an integer beyond 64 bits: JSON carries it, MessagePack cannot.
                log.warn(
                    "cannot encode a {type} message for {subprotocol} sessions: {error}",
                    type=self._message.envelope.get("type"),
                    subprotocol=self._codec.subprotocol,
                    error=str(e),
                )
                self._envelope = b""
        if not self._envelope:
            return []
        frames = []
        for subscription, topic in matched:
            key = (subscription.id, topic.uri)
            frame = self._events.get(key)
            if frame is None:
                payload = self._codec.event(
                    subscription.id, self._delivery.publication, subscription.details(topic), self._envelope
                )
                frame = self._events[key] = Frame(payload, self._codec.binary)
            frames.append(frame)
        return frames
