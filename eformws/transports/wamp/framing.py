"""How the hub's one-frame-per-message reaches WAMP sessions: per serialization, the
envelope is encoded once and each matched subscription's EVENT once, framed once per transport kind."""

from __future__ import annotations

from typing import Any

from autobahn.wamp.message import Event
from twisted.logger import Logger
from zope.interface import implementer

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
    (subscription, topic) is encoded on first use, framed on first use by each kind of
    transport (`prepare_event` of the connection's class: a WebSocket frame, a RawSocket
    frame), and shared by every subscriber."""

    __slots__ = ("_codec", "_delivery", "_message", "_envelope", "_payloads", "_events")

    def __init__(self, codec, delivery, message):
        self._codec = codec
        self._delivery = delivery
        self._message = message
        self._envelope: bytes | None = None
        self._payloads: dict[tuple[int, str], bytes | None] = {}
        self._events: dict[tuple[Any, int, str], Any] = {}

    def events_for(self, connection) -> list:
        matched = self._delivery.matches.get(connection)
        if not matched:
            return []
        prepare = type(connection).prepare_event
        if self._delivery.application:
            frames = [self._event(prepare, subscription, topic, self._application_event)
                      for subscription, topic in matched]
            return [frame for frame in frames if frame is not None]
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
        return [self._event(prepare, subscription, topic, self._envelope_event) for subscription, topic in matched]

    def _event(self, prepare, subscription, topic, encode):
        """The EVENT of (subscription, topic) framed by `prepare`, built on first use, then
        shared; None when this serialization cannot carry it."""
        key = (prepare, subscription.id, topic.uri)
        if key not in self._events:
            payload_key = key[1:]
            if payload_key not in self._payloads:
                self._payloads[payload_key] = encode(subscription.id, self._delivery.details(subscription, topic))
            payload = self._payloads[payload_key]
            self._events[key] = prepare(payload, self._codec.binary) if payload is not None else None
        return self._events[key]

    def _envelope_event(self, subscription_id: int, details: dict) -> bytes:
        return self._codec.event(subscription_id, self._delivery.publication, details, self._envelope)

    def _application_event(self, subscription_id: int, details: dict) -> bytes:
        """The publisher's args and kwargs, untouched; the topic of a pattern subscription
        and the publisher, when disclosed, in details."""
        published = self._message.envelope
        try:
            return self._codec.encode(Event(
                subscription_id, self._delivery.publication,
                args=published["args"] or None, kwargs=published["kwargs"] or None, **details,
            ))
        except Exception as e:  # e.g. an integer beyond 64 bits: JSON carries it, MessagePack cannot
            log.warn("cannot encode a publication on {topic} for {subprotocol} sessions: {error}",
                     topic=self._message.meta.get("wamp", {}).get("topic"), subprotocol=self._codec.subprotocol,
                     error=str(e)[:200])
            return None
