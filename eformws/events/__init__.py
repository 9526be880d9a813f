"""The structured-event catalog (docs/protocol.md section 6): per-type schemas and validation,
the structured-event envelope (D), addressing (namespaces, rooms, the kiosk room) and TTL."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable

from eformws.core import ids, wire
from eformws.core.message import Target

VERSION = "1.0.0"

LOCKER_STATES = ("closed", "open", "reserved", "maintenance", "error")
HELP_CATEGORIES = ("access_issue", "hardware_problem", "payment_issue", "other")
HELP_STATUSES = ("open", "assigned", "resolved")
PRIORITIES = ("low", "medium", "high", "urgent")
COMMAND_TYPES = ("open", "close", "reset", "buzzer", "status_check")
COMPONENTS = ("kiosk", "gateway", "panel", "database", "websocket")
COMPONENT_STATUSES = ("online", "offline", "degraded", "maintenance")
METRIC_NAMES = ("cpu_usage", "memory_usage", "disk_usage", "network_latency", "error_rate")

HOUR = 3600.0


class ValidationError(ValueError):
    """An event that breaks its schema: `field` (a dotted path), what was expected, the value."""

    def __init__(self, field: str, expectation: str, value: Any = None, present: bool = True):
        self.field = field
        self.expectation = expectation
        self.value = value
        shown = f", got {value!r}" if present else ""
        super().__init__(f"{field} {expectation}{shown}" if not present else f"{field} must be {expectation}{shown}")

    def to_json(self) -> dict:
        return {"field": self.field, "message": str(self)}


# -- field checks: each returns the value (possibly normalized) or raises --------------

Check = Callable[[str, Any], Any]


def _missing(path: str) -> ValidationError:
    return ValidationError(path, "is required", present=False)


def _kind(expectation: str, accepts: Callable[[Any], bool]) -> Check:
    """A check that a value is of one kind: the value if `accepts` it, else ValidationError
    saying it must be `expectation`."""
    def check(path: str, value: Any) -> Any:
        if not accepts(value):
            raise ValidationError(path, expectation, value)
        return value

    return check


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


text = _kind("a non-empty string", lambda value: isinstance(value, str) and bool(value))
string = _kind("a string", lambda value: isinstance(value, str))
integer = _kind("an integer", _is_integer)
boolean = _kind("true or false", lambda value: isinstance(value, bool))
obj = _kind("an object", lambda value: isinstance(value, dict))
text_or_integer = _kind("a non-empty string or an integer",
                        lambda value: _is_integer(value) or (isinstance(value, str) and bool(value)))


def number(low: float | None = None, high: float | None = None) -> Check:
    def check(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValidationError(path, "a number", value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValidationError(path, f"a number from {low:g} to {high:g}" if high is not None else f"a number >= {low:g}", value)
        return value

    return check


def anything(path: str, value: Any) -> Any:
    return value


def one_of(*choices: str) -> Check:
    def check(path: str, value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            raise ValidationError(path, "one of " + ", ".join(choices), value)
        return value

    return check


def timestamp(path: str, value: Any) -> str:
    """An ISO 8601 date-time string (with a time zone or `Z`)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and "T" in value.upper() and parsed.tzinfo is not None:
            return value
    raise ValidationError(path, "an ISO 8601 timestamp with a time zone", value)


def _where(parent: str | None, step) -> str:
    """The path of an element: the root's own path, `parent.key` or `parent[index]`."""
    if parent is None:
        return step
    return f"{parent}.{step}" if isinstance(step, str) else f"{parent}[{step}]"


def json_value(path: str, value: Any) -> Any:
    """`value` as it will travel: JSON objects with string keys, arrays, strings of valid
    Unicode, finite numbers, booleans, null, arrays and objects at most `wire.MAX_DEPTH`
    levels inside one another. Anything else would be stored, then fail to be sent (and
    poison every replay that includes it). The one check of every way in: HTTP, WAMP, Python.
    Walked without recursion; an element's path is only spelled out for an error or a
    container's children."""
    pending: list = [(None, path, value, 1)]
    while pending:
        parent, step, item, depth = pending.pop()
        kind = type(item)
        if kind is str:  # the common leaves first, by exact type
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValidationError(_where(parent, step), "valid Unicode text", item) from None
            continue
        if item is None or kind is bool:
            continue
        if kind is float:
            if not math.isfinite(item):
                raise ValidationError(_where(parent, step), "a finite number", item)
            continue
        if kind is int:
            if abs(item) > wire.MAX_FINITE_INT:
                raise ValidationError(_where(parent, step), "must be a finite number (this integer is beyond a double)",
                                      present=False)
            continue
        where = _where(parent, step)
        if depth > wire.MAX_DEPTH and isinstance(item, (list, dict)):
            raise ValidationError(path, f"must not nest arrays and objects more than {wire.MAX_DEPTH} levels deep",
                                  present=False)
        if isinstance(item, bool):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(where, "a finite number", item)
        elif isinstance(item, int):
            if abs(item) > wire.MAX_FINITE_INT:
                raise ValidationError(where, "must be a finite number (this integer is beyond a double)", present=False)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError(where, "valid Unicode text", item) from None
        elif isinstance(item, list):
            pending.extend((where, index, element, depth + 1) for index, element in enumerate(item))
        elif isinstance(item, dict):
            for key, element in item.items():
                if not isinstance(key, str):
                    raise ValidationError(where, "an object with string keys", item)
                if not key.isascii():
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValidationError(where, "valid Unicode text", key) from None
                pending.append((where, key, element, depth + 1))
        else:
            raise ValidationError(where, "a JSON value", item)
    return value


@dataclass(frozen=True)
class Schema:
    """Required and optional fields with their checks; `open_` lets other keys through."""

    required: tuple[tuple[str, Check], ...]
    optional: tuple[tuple[str, Check], ...] = ()
    open_: bool = False

    def validate(self, path: str, value: Any) -> dict:
        obj(path, value)
        known = set()
        out: dict[str, Any] = {}
        for name, check in self.required:
            known.add(name)
            if name not in value:
                raise _missing(f"{path}.{name}")
            out[name] = check(f"{path}.{name}", value[name])
        for name, check in self.optional:
            known.add(name)
            if name in value:
                # A null passed on purpose is kept; an absent field stays absent.
                out[name] = None if value[name] is None else check(f"{path}.{name}", value[name])
        for name in value:
            if name not in known:
                if not self.open_:
                    raise ValidationError(f"{path}.{name}", "is not a known property", present=False)
                out[name] = value[name]
        return {name: out[name] for name in value if name in out}  # keep the caller's order


def nested(schema: Schema) -> Check:
    return schema.validate


METRICS = Schema((), tuple((name, number(0)) for name in METRIC_NAMES))

COMMAND = Schema(
    (("id", text), ("type", one_of(*COMMAND_TYPES)), ("issued_by", text), ("issued_at", timestamp)),
    (("lockerId", text), ("kioskId", text), ("parameters", obj)),
)
RESULT = Schema(
    (("success", boolean), ("timestamp", timestamp)),
    (
        ("message", string),
        ("error", string),
        ("execution_time_ms", number(0)),
        ("response_data", anything),
    ),
)


@dataclass(frozen=True)
class EventType:
    name: str
    namespace: str
    room: str
    delivered_on: tuple[str, ...]
    ttl: float
    schema: Schema
    kiosk_of: Callable[[dict], str | None]

    def targets(self, data: dict) -> tuple[Target, ...]:
        """Per namespace: the home default room, `system_events` on /ws/events, the kiosk room."""
        kiosk = self.kiosk_of(data)
        return _targets(self, kiosk if isinstance(kiosk, str) else None)

    def _targets_for(self, kiosk: str | None) -> tuple[Target, ...]:
        targets = []
        for namespace in self.delivered_on:
            rooms = [self.room]
            if namespace == EVENTS_NAMESPACE and "system_events" not in rooms:
                rooms.append("system_events")
            if kiosk is not None and kiosk not in rooms:
                rooms.append(kiosk)
            targets.append(Target(namespace, rooms=tuple(rooms)))
        return tuple(targets)


@lru_cache(maxsize=4096)
def _targets(kind: EventType, kiosk: str | None) -> tuple[Target, ...]:
    """The targets of one type and kiosk, made once (every event of a kiosk has the same)."""
    return kind._targets_for(kiosk)


EVENTS_NAMESPACE = "/ws/events"

CATALOG: dict[str, EventType] = {
    event.name: event
    for event in (
        EventType(
            "locker_state_changed",
            "/ws/lockers",
            "locker_updates",
            ("/ws/lockers", EVENTS_NAMESPACE),
            24 * HOUR,
            Schema(
                (
                    ("lockerId", text),
                    ("oldState", one_of(*LOCKER_STATES)),
                    ("newState", one_of(*LOCKER_STATES)),
                    ("kioskId", text),
                ),
                (("userId", text_or_integer), ("reason", text), ("metadata", obj)),
            ),
            lambda data: data.get("kioskId"),
        ),
        EventType(
            "help_requested",
            "/ws/help",
            "help_requests",
            ("/ws/help", EVENTS_NAMESPACE),
            48 * HOUR,
            Schema(
                (
                    ("id", integer),
                    ("kiosk_id", text),
                    ("category", one_of(*HELP_CATEGORIES)),
                    ("status", one_of(*HELP_STATUSES)),
                    ("created_at", timestamp),
                    ("priority", one_of(*PRIORITIES)),
                ),
                (("locker_no", integer), ("note", string),
                 ("photo_url", text), ("user_contact", text)),
                open_=True,
            ),
            lambda data: data.get("kiosk_id"),
        ),
        EventType(
            "help_status_updated",
            "/ws/help",
            "help_requests",
            ("/ws/help", EVENTS_NAMESPACE),
            48 * HOUR,
            Schema(
                (
                    ("id", integer),
                    ("old_status", one_of(*HELP_STATUSES)),
                    ("new_status", one_of(*HELP_STATUSES)),
                    ("updated_at", timestamp),
                ),
                (("agent_id", text_or_integer), ("resolution_notes", string)),
            ),
            lambda data: None,
        ),
        EventType(
            "command_applied",
            EVENTS_NAMESPACE,
            "system_events",
            (EVENTS_NAMESPACE,),
            72 * HOUR,
            Schema((("command", nested(COMMAND)), ("result", nested(RESULT)))),
            lambda data: data["command"].get("kioskId"),
        ),
        EventType(
            "system_status",
            EVENTS_NAMESPACE,
            "system_events",
            (EVENTS_NAMESPACE,),
            24 * HOUR,
            Schema(
                (
                    ("component", one_of(*COMPONENTS)),
                    ("status", one_of(*COMPONENT_STATUSES)),
                    ("health_score", number(0, 100)),
                ),
                (("metrics", nested(METRICS)), ("message", text), ("details", obj)),
            ),
            lambda data: None,
        ),
    )
}


def event_type(name: Any) -> EventType:
    if not isinstance(name, str) or name not in CATALOG:
        raise ValidationError("type", "one of " + ", ".join(CATALOG), name)
    return CATALOG[name]


def prepare_data(name: str, data: Any, now: float) -> dict:
    """Fill what the server owns (help priority default, `updated_at`), then validate the
    schema and that every value can be sent as JSON."""
    if isinstance(data, dict):
        if name == "help_requested" and "priority" not in data:
            data = {**data, "priority": "medium"}
        elif name == "help_status_updated":
            data = {**data, "updated_at": wire.js_timestamp(now)}
    return json_value("data", event_type(name).schema.validate("data", data))


MAX_DATA_BYTES = 65536  # `events.max_data_bytes`: an event's data as JSON, the size of an API body


def build(name: str, data: Any, now: float | None = None, max_bytes: int = MAX_DATA_BYTES) -> dict:
    """Validate and return the structured-event envelope (D) without its `seq` and `epoch` (the store assigns them);
    its data must be at most `max_bytes` as compact JSON."""
    now = time.time() if now is None else now
    kind = event_type(name)
    checked = prepare_data(name, data, now)
    size = len(wire.dumps(checked))
    if size > max_bytes:
        raise ValidationError("data", f"must be at most {max_bytes} bytes as JSON (it is {size})", present=False)
    return {
        "id": ids.uuid4(),
        "seq": None,
        "epoch": None,
        "type": name,
        "timestamp": wire.js_timestamp(now),
        "namespace": kind.namespace,
        "room": kind.room,
        "version": VERSION,
        "data": checked,
    }


def targets_of(envelope: dict) -> tuple[Target, ...]:
    return CATALOG[envelope["type"]].targets(envelope["data"])


def ttl_of(name: str) -> float:
    return CATALOG[name].ttl
