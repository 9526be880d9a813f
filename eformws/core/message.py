"""What travels on the bus: an envelope, the targets it is addressed to, and its creation
time; serialized once, and to/from JSON for transports between processes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eformws.core import wire


@dataclass(frozen=True)
class Target:
    """A namespace, narrowed to some rooms or to one connection (neither: all of it)."""

    namespace: str
    rooms: tuple[str, ...] | None = None
    connection_id: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"ns": self.namespace}
        if self.rooms is not None:
            out["rooms"] = list(self.rooms)
        if self.connection_id is not None:
            out["conn"] = self.connection_id
        return out

    @classmethod
    def from_json(cls, value: dict) -> "Target":
        rooms = value.get("rooms")
        return cls(value["ns"], tuple(rooms) if rooms is not None else None, value.get("conn"))


@dataclass
class Message:
    """`meta`: annotations the hub passes along untouched, for endpoints (the WAMP broker
    keeps its publication id and publisher exclusion there); empty for most messages.
    `position`: set by the event feed for structured events."""

    envelope: dict
    targets: tuple[Target, ...]
    created: float = field(default_factory=time.time)
    meta: dict = field(default_factory=dict)
    position: Any = None  # a structured event's place in the event log (eformws.events.store.Position)
    # A client's payload (a WAMP application's publication): carried between processes exactly,
    # with what JSON cannot hold (byte strings, map keys that are not strings).
    opaque: bool = False
    _payload: bytes | None = field(default=None, repr=False, compare=False)
    _redacted: "Message | None" = field(default=None, repr=False, compare=False)

    def redacted(self, redactor) -> "Message":
        """This message as roles that may not see sensitive fields get it: itself when it
        has none, else a copy (made once, then kept)."""
        if self._redacted is None:
            envelope = redactor.redact(self.envelope)
            self._redacted = self if envelope is self.envelope else Message(
                envelope, self.targets, self.created, self.meta, self.position, self.opaque
            )
        return self._redacted

    def is_or_redacts(self, other: "Message") -> bool:
        """Whether `other` is this message or the copy of it redacted for other roles (one
        message, two audiences)."""
        return other is self or other is self._redacted

    @property
    def payload(self) -> bytes:
        """The envelope as compact JSON, computed once whatever the number of readers."""
        if self._payload is None:
            self._payload = wire.dumps(self.envelope)
        return self._payload

    def to_json(self) -> dict:
        out = {
            "envelope": self.envelope,
            "targets": [t.to_json() for t in self.targets],
            "created": self.created,
        }
        if self.meta:
            out["meta"] = self.meta
        if self.opaque:
            out["opaque"] = True
        return out

    @classmethod
    def from_json(cls, value: dict) -> "Message":
        return cls(
            value["envelope"],
            tuple(Target.from_json(t) for t in value["targets"]),
            value["created"],
            value.get("meta") or {},
            opaque=bool(value.get("opaque")),
        )
