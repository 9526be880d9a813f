"""The event catalog (eformws.events, PROTOCOL.md section 6) without a server: schemas,
envelope D, addressing and TTLs; and hypothesis properties over the whole schema: every
valid event is accepted and survives the wire, every single broken rule is refused with
a ValidationError naming the broken field."""

from __future__ import annotations

import json
import string
import uuid
from datetime import datetime, timezone

import pytest
from conftest import TS, locker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eformws import events
from eformws.core import wire
from eformws.core.message import Target

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENVELOPE_KEYS = ["id", "seq", "epoch", "type", "timestamp", "namespace", "room", "version", "data"]
CREATED_AT = "2024-01-15T10:30:00.000Z"

LOCKER_STATES = ["closed", "open", "reserved", "maintenance", "error"]
HELP_CATEGORIES = ["access_issue", "hardware_problem", "payment_issue", "other"]
HELP_STATUSES = ["open", "assigned", "resolved"]
PRIORITIES = ["low", "medium", "high", "urgent"]
COMMAND_TYPES = ["open", "close", "reset", "buzzer", "status_check"]
COMPONENTS = ["kiosk", "gateway", "panel", "database", "websocket"]
COMPONENT_STATUSES = ["online", "offline", "degraded", "maintenance"]
METRIC_NAMES = ["cpu_usage", "memory_usage", "disk_usage", "network_latency", "error_rate"]


# -- field kinds: what is valid, and what breaks them -------------------------------------------
#
# The schema below is written from PROTOCOL.md section 6 and docs/events.md, not read from
# eformws.events, so that the properties check the code against the contract.

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
non_finite = st.sampled_from([float("inf"), float("-inf"), float("nan")])


def js_iso(moment) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


iso_timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)
).map(js_iso)

bad_timestamps = (
    st.sampled_from(
        [
            "",
            "yesterday",
            "2024-01-15",
            "2024-01-15T10:30:00",
            "2024-01-15T10:30:00.000",
            "2024-13-01T10:30:00.000Z",
            "2024-01-32T10:30:00.000Z",
            "2024-01-15T25:30:00.000Z",
            "2024-01-15 10:30:00.000Z",
            "15/01/2024 10:30Z",
        ]
    )
    | st.text(alphabet=string.ascii_letters + " :-", max_size=12)
    | st.integers()
    | st.booleans()
)


class Kind:
    """A field kind: `valid` values, and `broken` values as (value, suffix) where the
    suffix is what the ValidationError's field adds to the field's own path."""

    def __init__(self, name, valid, broken):
        self.name = name
        self.valid = valid
        self.broken = broken


def plain(strategy):
    return strategy.map(lambda value: (value, ""))


identifier = Kind(
    "identifier",
    st.text(min_size=1, max_size=16),
    plain(st.just("") | st.integers() | st.booleans() | st.lists(st.text(), max_size=2) | json_objects),
)
free_text = Kind(
    "string",
    st.text(max_size=16),
    plain(st.integers() | st.booleans() | st.floats(allow_nan=False) | st.lists(st.text(), max_size=2)),
)
integer = Kind(
    "integer",
    st.integers(),
    plain(st.text(max_size=8) | st.booleans() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)),
)
identifier_or_integer = Kind(
    "identifier or integer",
    st.text(min_size=1, max_size=16) | st.integers(),
    plain(st.just("") | st.booleans() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)),
)
boolean = Kind(
    "boolean",
    st.booleans(),
    plain(st.integers() | st.text(max_size=5) | st.floats(allow_nan=False)),
)
timestamp = Kind("timestamp", iso_timestamps, plain(bad_timestamps))
free_object = Kind(
    "object",
    json_objects,
    plain(st.lists(json_values, max_size=2) | st.text() | st.integers() | st.booleans())
    | non_finite.map(lambda f: ({"x": f}, ".x"))
    | non_finite.map(lambda f: ({"x": {"y": [1, f]}}, ".x.y[1]")),
)
free_value = Kind(
    "any JSON value",
    json_values,
    non_finite.map(lambda f: (f, "")) | non_finite.map(lambda f: ({"x": f}, ".x")),
)


def enum(choices):
    return Kind(
        "one of " + ", ".join(choices),
        st.sampled_from(choices),
        plain(st.text(max_size=12).filter(lambda s: s not in choices) | st.integers() | st.booleans()),
    )


def number(low, high=None):
    # (bounds a hair away from the limit: hypothesis counts -0.0 as below 0.0)
    out_of_range = st.floats(max_value=low - 1e-6, allow_infinity=False) | st.integers(max_value=int(low) - 1)
    if high is not None:
        out_of_range |= st.floats(min_value=high + 1e-6, allow_nan=False, allow_infinity=False)
        out_of_range |= st.integers(min_value=int(high) + 1)
        valid = st.floats(min_value=low, max_value=high) | st.integers(min_value=int(low), max_value=int(high))
    else:
        valid = st.floats(min_value=low, allow_infinity=False) | st.integers(min_value=int(low))
    return Kind(
        "number",
        valid,
        plain(out_of_range | st.text(max_size=8) | st.booleans() | non_finite),
    )


class Shape:
    """An object schema: required and optional fields (a Kind or a nested Shape), whether
    unknown keys pass through, and which fields the server fills itself."""

    def __init__(self, required, optional=(), open_=False, server_owned=()):
        self.required = dict(required)
        self.optional = dict(optional)
        self.open_ = open_
        self.server_owned = set(server_owned)

    @property
    def fields(self):
        return {**self.required, **self.optional}


COMMAND = Shape(
    [("id", identifier), ("type", enum(COMMAND_TYPES)), ("issued_by", identifier), ("issued_at", timestamp)],
    [("lockerId", identifier), ("kioskId", identifier), ("parameters", free_object)],
)
RESULT = Shape(
    [("success", boolean), ("timestamp", timestamp)],
    [("message", free_text), ("error", free_text), ("execution_time_ms", number(0)), ("response_data", free_value)],
)
METRICS = Shape([], [(name, number(0)) for name in METRIC_NAMES])

SCHEMAS = {
    "locker_state_changed": Shape(
        [("lockerId", identifier), ("oldState", enum(LOCKER_STATES)), ("newState", enum(LOCKER_STATES)), ("kioskId", identifier)],
        [("userId", identifier_or_integer), ("reason", identifier), ("metadata", free_object)],
    ),
    "help_requested": Shape(
        [
            ("id", integer),
            ("kiosk_id", identifier),
            ("category", enum(HELP_CATEGORIES)),
            ("status", enum(HELP_STATUSES)),
            ("created_at", timestamp),
            ("priority", enum(PRIORITIES)),
        ],
        [("locker_no", integer), ("note", free_text), ("photo_url", identifier), ("user_contact", identifier)],
        open_=True,
        server_owned={"priority"},  # defaults to medium when left out
    ),
    "help_status_updated": Shape(
        [("id", integer), ("old_status", enum(HELP_STATUSES)), ("new_status", enum(HELP_STATUSES)), ("updated_at", timestamp)],
        [("agent_id", identifier_or_integer), ("resolution_notes", free_text)],
        server_owned={"updated_at"},  # always the server's time
    ),
    "command_applied": Shape([("command", COMMAND), ("result", RESULT)]),
    "system_status": Shape(
        [("component", enum(COMPONENTS)), ("status", enum(COMPONENT_STATUSES)), ("health_score", number(0, 100))],
        [("metrics", METRICS), ("message", identifier), ("details", free_object)],
    ),
}


# -- strategies of valid data -------------------------------------------------------------


def valid_value(kind):
    if isinstance(kind, Shape):
        return valid_object(kind)
    return kind.valid


def valid_object(shape: Shape):
    """All required fields, a random subset of optional ones (sometimes null on purpose);
    server-owned fields sometimes left out."""
    required = {name: valid_value(kind) for name, kind in shape.required.items() if name not in shape.server_owned}
    optional = {name: st.none() | valid_value(kind) for name, kind in shape.optional.items()}
    optional.update({name: valid_value(shape.required[name]) for name in shape.server_owned})
    return st.fixed_dictionaries(required, optional=optional)


def extra_keys(shape: Shape):
    return st.dictionaries(st.text(max_size=10).filter(lambda k: k not in shape.fields), json_values, max_size=3)


@st.composite
def valid_events(draw, types=tuple(SCHEMAS)):
    event_type = draw(st.sampled_from(types))
    shape = SCHEMAS[event_type]
    data = draw(valid_object(shape))
    if shape.open_:
        data.update(draw(extra_keys(shape)))
    return event_type, data


# -- strategies of data with exactly one rule broken ------------------------------------------


NOT_AN_OBJECT = Kind("not an object", None, plain(st.lists(st.integers(), max_size=2) | st.text() | st.integers() | st.booleans()))


def mutations(shape: Shape, path: str):
    """(action, path of the object, field name, Kind or Shape) for every rule of `shape`:
    remove a required field, null a required field, give a field a value that breaks its
    kind, add an unknown key (or, where unknown keys pass, one that is not JSON)."""
    found = []
    for name, kind in shape.fields.items():
        if name in shape.server_owned:
            continue
        if name in shape.required:
            found.append(("remove", path, name, None))
            found.append(("null", path, name, None))
        if isinstance(kind, Shape):
            found.append(("replace", path, name, NOT_AN_OBJECT))
            found.extend(mutations(kind, f"{path}.{name}"))
        else:
            found.append(("replace", path, name, kind))
    if shape.open_:
        found.append(("extra_non_finite", path, None, shape))
    else:
        found.append(("unknown", path, None, shape))
    return found


def container(data: dict, path: str) -> dict:
    """The object at `path` (under "data"), created empty when an optional object is absent."""
    current = data
    for name in path.split(".")[1:]:
        if not isinstance(current.get(name), dict):
            current[name] = {}
        current = current[name]
    return current


@st.composite
def broken_events(draw, event_type, mutation):
    """(data, field): valid data of `event_type` with the rule of `mutation` broken, and
    the field that names it."""
    _, data = draw(valid_events((event_type,)))
    action, path, name, kind = mutation
    target = container(data, path)
    if action == "remove":
        target.pop(name, None)
        return data, f"{path}.{name}"
    if action == "null":
        target[name] = None
        return data, f"{path}.{name}"
    if action == "replace":
        value, suffix = draw(kind.broken)
        target[name] = value
        return data, f"{path}.{name}{suffix}"
    key = draw(st.text(max_size=10).filter(lambda k: k not in kind.fields))
    if action == "unknown":
        target[key] = draw(json_values)
        return data, f"{path}.{key}"
    target[key] = draw(non_finite)  # open schema: any key, but it must still be JSON
    return data, f"{path}.{key}"


EVERY_RULE = [
    pytest.param(event_type, mutation, id=f"{event_type}:{mutation[0]}:{mutation[1]}.{mutation[2] or '*'}")
    for event_type, shape in SCHEMAS.items()
    for mutation in mutations(shape, "data")
]


# -- properties ---------------------------------------------------------------------------


@PROPERTY
@given(valid_events())
def test_every_schema_valid_event_is_accepted(event):
    event_type, data = event
    envelope = events.build(event_type, data)
    assert envelope["type"] == event_type


@PROPERTY
@given(valid_events())
def test_accepted_envelope_round_trips_through_the_wire_unchanged(event):
    envelope = events.build(*event)
    text = wire.dumps(envelope)
    assert json.loads(text) == envelope
    assert wire.dumps(json.loads(text)) == text  # key order too


@PROPERTY
@given(valid_events())
def test_accepted_data_is_the_callers_data_in_the_callers_order(event):
    event_type, data = event
    envelope = events.build(event_type, data)
    owned = SCHEMAS[event_type].server_owned
    assert {k: v for k, v in envelope["data"].items() if k not in owned} == {k: v for k, v in data.items() if k not in owned}
    assert [k for k in envelope["data"] if k not in owned] == [k for k in data if k not in owned]


@pytest.mark.parametrize("event_type, mutation", EVERY_RULE)
def test_every_single_broken_rule_is_refused_naming_the_field(event_type, mutation):
    # One parametrized case per rule, so that every rule is tried on every run; the
    # property runs inside (pytest-twisted cannot wrap a test that is both
    # parametrized and @given).
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(broken_events(event_type, mutation))
    def refused_naming_the_field(case):
        data, field = case
        with pytest.raises(events.ValidationError) as failure:
            events.build(event_type, data)
        assert failure.value.field == field, (failure.value, data)

    refused_naming_the_field()


@PROPERTY
@given(valid_events(types=("help_requested",)), st.data())
def test_help_requested_passes_unknown_keys_through(event, extra):
    _, data = event
    shape = SCHEMAS["help_requested"]
    added = extra.draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in shape.fields), json_values, min_size=1, max_size=3))
    data.update(added)
    envelope = events.build("help_requested", data)
    assert {k: envelope["data"][k] for k in added} == added


@PROPERTY
@given(valid_events(types=("help_status_updated",)))
def test_help_status_updated_at_is_always_the_server_time(event):
    _, data = event
    data["updated_at"] = "2001-01-01T00:00:00.000Z"
    envelope = events.build("help_status_updated", data, now=1705314600.25)
    assert envelope["data"]["updated_at"] == "2024-01-15T10:30:00.250Z" == envelope["timestamp"]


@PROPERTY
@given(
    st.datetimes(timezones=st.sampled_from([timezone.utc])).map(lambda d: d.isoformat()),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_any_iso_timestamp_with_a_time_zone_is_accepted(moment, offset_minutes):
    sign = "+" if offset_minutes >= 0 else "-"
    with_offset = moment[: -len("+00:00")] + f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    assert events.timestamp("t", moment) == moment
    assert events.timestamp("t", with_offset) == with_offset


@PROPERTY
@given(valid_events())
def test_validation_does_not_change_the_callers_data(event):
    event_type, data = event
    before = json.dumps(data)
    events.build(event_type, data)
    assert json.dumps(data) == before


# -- unit tests: the catalog --------------------------------------------------------------


def help_request(**changes):
    data = {"id": 17, "kiosk_id": "kiosk-1", "category": "other", "status": "open", "created_at": CREATED_AT}
    data.update(changes)
    return data


def command(kiosk="kiosk-1"):
    cmd = {"id": "cmd-9", "type": "open", "issued_by": "staff-3", "issued_at": CREATED_AT}
    if kiosk is not None:
        cmd["kioskId"] = kiosk
    return {"command": cmd, "result": {"success": True, "timestamp": CREATED_AT}}


SAMPLES = {
    "locker_state_changed": locker(),
    "help_requested": help_request(),
    "help_status_updated": {"id": 17, "old_status": "open", "new_status": "assigned"},
    "command_applied": command(),
    "system_status": {"component": "kiosk", "status": "online", "health_score": 99},
}


@pytest.mark.parametrize(
    "event_type, namespace, room",
    [
        ("locker_state_changed", "/ws/lockers", "locker_updates"),
        ("help_requested", "/ws/help", "help_requests"),
        ("help_status_updated", "/ws/help", "help_requests"),
        ("command_applied", "/ws/events", "system_events"),
        ("system_status", "/ws/events", "system_events"),
    ],
)
def test_build_gives_envelope_d_with_the_home_namespace_and_room(event_type, namespace, room):
    envelope = events.build(event_type, SAMPLES[event_type], now=1705314600.0)
    assert list(envelope) == ENVELOPE_KEYS
    assert envelope["seq"] is None  # the store assigns it
    assert uuid.UUID(envelope["id"]).version == 4
    assert envelope["timestamp"] == "2024-01-15T10:30:00.000Z"
    assert (envelope["type"], envelope["namespace"], envelope["room"], envelope["version"]) == (
        event_type,
        namespace,
        room,
        "1.0.0",
    )


def test_build_timestamp_is_js_iso_with_three_digits():
    envelope = events.build("system_status", SAMPLES["system_status"])
    assert TS.match(envelope["timestamp"])


@pytest.mark.parametrize(
    "event_type, data, targets",
    [
        (
            "locker_state_changed",
            locker(kioskId="kiosk-1"),
            [("/ws/lockers", {"locker_updates", "kiosk-1"}), ("/ws/events", {"locker_updates", "system_events", "kiosk-1"})],
        ),
        (
            "help_requested",
            help_request(kiosk_id="kiosk-2"),
            [("/ws/help", {"help_requests", "kiosk-2"}), ("/ws/events", {"help_requests", "system_events", "kiosk-2"})],
        ),
        (
            "help_status_updated",
            SAMPLES["help_status_updated"],
            [("/ws/help", {"help_requests"}), ("/ws/events", {"help_requests", "system_events"})],
        ),
        ("command_applied", command("kiosk-3"), [("/ws/events", {"system_events", "kiosk-3"})]),
        ("command_applied", command(None), [("/ws/events", {"system_events"})]),
        ("system_status", SAMPLES["system_status"], [("/ws/events", {"system_events"})]),
    ],
    ids=["locker", "help_requested", "help_status_updated", "command_with_kiosk", "command_without_kiosk", "system_status"],
)
def test_targets_follow_the_delivery_rule(event_type, data, targets):
    found = events.targets_of(events.build(event_type, data))
    assert all(isinstance(t, Target) and t.connection_id is None for t in found)
    assert [(t.namespace, set(t.rooms)) for t in found] == targets
    assert all(len(t.rooms) == len(set(t.rooms)) for t in found)


def test_targets_name_a_room_once_when_the_kiosk_is_called_like_a_default_room():
    [lockers, firehose] = events.targets_of(events.build("locker_state_changed", locker(kioskId="system_events")))
    assert sorted(lockers.rooms) == ["locker_updates", "system_events"]
    assert sorted(firehose.rooms) == ["locker_updates", "system_events"]


@pytest.mark.parametrize(
    "event_type, hours",
    [("locker_state_changed", 24), ("help_requested", 48), ("help_status_updated", 48), ("command_applied", 72), ("system_status", 24)],
)
def test_time_to_live_per_type(event_type, hours):
    assert events.ttl_of(event_type) == hours * 3600


@pytest.mark.parametrize("name", ["locker_exploded", "", None, 7, "LOCKER_STATE_CHANGED"])
def test_unknown_event_type_is_refused_naming_type(name):
    with pytest.raises(events.ValidationError) as failure:
        events.build(name, {})
    assert failure.value.field == "type"


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_data_that_is_not_an_object_is_refused_naming_data(data):
    with pytest.raises(events.ValidationError) as failure:
        events.build("system_status", data)
    assert failure.value.field == "data"


def test_validation_error_message_says_field_expectation_and_value():
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", locker(oldState="shut"))
    error = failure.value
    assert error.field == "data.oldState"
    assert str(error) == "data.oldState must be one of closed, open, reserved, maintenance, error, got 'shut'"
    assert error.to_json() == {"field": "data.oldState", "message": str(error)}


def test_missing_field_message_says_it_is_required():
    data = locker()
    del data["kioskId"]
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", data)
    assert str(failure.value) == "data.kioskId is required"


def test_help_priority_defaults_to_medium():
    assert events.build("help_requested", help_request())["data"]["priority"] == "medium"


def test_help_priority_given_is_kept():
    assert events.build("help_requested", help_request(priority="urgent"))["data"]["priority"] == "urgent"


def test_help_status_updated_without_updated_at_gets_the_server_time():
    envelope = events.build("help_status_updated", SAMPLES["help_status_updated"], now=1705314600.5)
    assert envelope["data"]["updated_at"] == "2024-01-15T10:30:00.500Z"


def test_optional_null_passed_on_purpose_is_kept():
    envelope = events.build("locker_state_changed", locker(userId=None, reason=None))
    assert envelope["data"]["userId"] is None and envelope["data"]["reason"] is None
    assert b'"userId":null' in wire.dumps(envelope)


def test_required_null_is_refused():
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", locker(lockerId=None))
    assert failure.value.field == "data.lockerId"


def test_health_score_bounds_are_inclusive():
    for score in (0, 100, 0.0, 100.0):
        events.build("system_status", dict(SAMPLES["system_status"], health_score=score))


@pytest.mark.parametrize("score", [-0.001, 100.001, -1, 101])
def test_health_score_out_of_range_is_refused(score):
    with pytest.raises(events.ValidationError) as failure:
        events.build("system_status", dict(SAMPLES["system_status"], health_score=score))
    assert failure.value.field == "data.health_score"


def test_bool_is_not_an_integer_id():
    with pytest.raises(events.ValidationError) as failure:
        events.build("help_requested", help_request(id=True))
    assert failure.value.field == "data.id"


def test_nested_unknown_key_is_refused_with_its_dotted_path():
    data = command()
    data["command"]["colour"] = "red"
    with pytest.raises(events.ValidationError) as failure:
        events.build("command_applied", data)
    assert failure.value.field == "data.command.colour"


def test_non_string_object_key_is_refused():
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", locker(metadata={1: "one"}))
    assert failure.value.field == "data.metadata"


def test_lone_surrogate_text_is_refused():
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", locker(reason="bad \ud800 text"))
    assert failure.value.field == "data.reason"


def test_python_only_values_are_refused():
    with pytest.raises(events.ValidationError) as failure:
        events.build("locker_state_changed", locker(metadata={"when": {1, 2}}))
    assert failure.value.field == "data.metadata.when"


def test_event_ids_are_distinct_version_4_uuids():
    import uuid

    from eformws.core.ids import uuid4

    made = [uuid4() for _ in range(5000)]  # more than one 4 KiB draw of random bytes
    assert len(set(made)) == len(made)
    for text in made[:300]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
