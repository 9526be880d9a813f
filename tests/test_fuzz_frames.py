"""Hypothesis against a live server's WebSocket input (PROTOCOL.md section 4, docs/protocol.md):
random text and binary frames, JSON of the wrong shape, mutated valid messages (join_room,
leave_room, ping, resume), lone surrogate escapes and invalid UTF-8, deep nesting, frames
and messages over the size limit. Each frame's answer is predicted by a model of the
documented contract (`expected`) and must be exactly that: the reply (type, error code and
message) or the close code. After every example a bystander on another namespace still
gets a broadcast, and every few examples /healthz still answers; nothing may be logged as
a failure (logcheck).

One server and one "victim" connection per test serve every example (a fresh connection
only after the server closed one); the rate limit is raised so that it never answers
instead of the model. Hypothesis runs derandomized, without a database or deadline; each
example blocks on the reactor with pytest_twisted.blockon (a @given test cannot be async).
Run with -s to see how many examples each test ran and what they were answered."""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from websockets.exceptions import ConnectionClosed

from conftest import TS
from logcheck import logged_problems  # noqa: F401  (autouse: no failure in the log)

LIMIT = 65536  # websocket.max_message_bytes
MAX_DEPTH = 128  # eformws.core.wire.MAX_DEPTH
MAX_ROOM = 128
OVERRIDES = {
    "websocket.rate_limit": 10000.0,
    "websocket.rate_burst": 10000,
    "websocket.max_rooms": 100_000,  # the model does not count rooms (the most allowed)
    "events.replay_limit": 0,
}
HEALTHZ_EVERY = 10


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # one server for every example, on purpose
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# -- the model: what the contract says a frame is answered ---------------------------------------


@dataclass(frozen=True)
class Reply:
    type: str
    code: str | None = None  # for `error`
    message: str | None = None  # for `error`; None: any non-empty text
    data: Any = None  # for room_joined / room_left
    echo: Any = None  # for pong
    echo_present: bool = False


@dataclass(frozen=True)
class Close:
    code: int


INVALID = Reply("error", "invalid_message", "Invalid message format")


def _reject_constant(name):
    raise ValueError(name)


def _finite(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError(text)
    return value


def _depth(value) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children)
    return deepest


def _unicode_ok(value) -> bool:
    """No lone surrogate anywhere (strings and keys)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if any("\ud800" <= c <= "\udfff" for c in item):
                return False
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return True


def _field(message: dict, name: str):
    if name in message:
        return True, message[name]
    data = message.get("data")
    if isinstance(data, dict) and name in data:
        return True, data[name]
    return False, None


def _room_rule(room) -> str | None:
    if room is None:
        return "Room is required"
    if not isinstance(room, str):
        return "Room must be a string"
    if not room:
        return "Room must not be empty"
    if len(room) > MAX_ROOM:
        return f"Room must be at most {MAX_ROOM} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in room):
        return "Room must not contain control characters"
    return None


def expected(frame: str | bytes, as_text: bool) -> Reply | Close:
    """The documented answer to one frame from an admin session on /ws/lockers."""
    payload = frame.encode("utf-8") if isinstance(frame, str) else frame
    if len(payload) > LIMIT:
        return Close(1009)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return Close(1007) if as_text else INVALID  # text frames are UTF-8 (RFC 6455)
    try:
        message = json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        return INVALID
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return INVALID
    if _depth(message) > MAX_DEPTH or not _unicode_ok(message):
        return INVALID
    kind = message["type"]
    if kind in ("join_room", "leave_room"):
        _, room = _field(message, "room")
        rule = _room_rule(room)
        if rule is not None:
            return Reply("error", "invalid_room", rule)
        return Reply("room_joined" if kind == "join_room" else "room_left", data={"room": room})
    if kind == "ping":
        data = message.get("data")
        if isinstance(data, dict) and "timestamp" in data:
            return Reply("pong", echo=data["timestamp"], echo_present=True)
        if "timestamp" in message:
            return Reply("pong", echo=message["timestamp"], echo_present=True)
        return Reply("pong")
    if kind == "resume":
        data = message.get("data")
        since = data.get("since") if isinstance(data, dict) else None
        if since is None:
            since = message.get("since")
        if not isinstance(since, (str, int)) or isinstance(since, bool):
            return Reply("error", "invalid_message", "resume needs data.since, the seq of the last event seen")
        return Reply("resumed")
    return Reply("error", "unknown_type", f"Unknown message type: {kind}")


def same(a, b) -> bool:
    """JSON equality that tells 1, 1.0 and true apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check_reply(want: Reply, got: dict) -> None:
    assert list(got) == ["type", "data", "timestamp"], got
    assert TS.match(got["timestamp"]), got
    assert got["type"] == want.type, (want, got)
    data = got["data"]
    if want.type == "error":
        assert list(data) == ["code", "message"], got
        assert data["code"] == want.code, (want, got)
        assert data["message"] == want.message, (want, got)
    elif want.type in ("room_joined", "room_left"):
        assert data == want.data, (want, got)
    elif want.type == "pong":
        assert list(data) == ["timestamp", "server_timestamp"], got
        assert TS.match(data["server_timestamp"]), got
        if want.echo_present:
            assert same(data["timestamp"], want.echo), (want, got)
        else:
            assert TS.match(data["timestamp"]), got
    elif want.type == "resumed":
        assert isinstance(data["recovered"], bool) and isinstance(data["count"], int), got
        assert set(data) <= {"recovered", "count", "seq", "epoch"}, got


# -- the harness -------------------------------------------------------------------------------


def run(coroutine):
    return pytest_twisted.blockon(defer.ensureDeferred(coroutine))


class Fuzzer:
    """A victim connection the frames go to, and a bystander that must not notice."""

    def __init__(self, server, session_id: str, name: str):
        self.server = server
        self.session_id = session_id
        self.name = name
        self.victim = None
        self.bystander = None
        self.examples = 0
        self.outcomes = collections.Counter()
        self.reconnects = 0

    async def start(self):
        self.victim = await self.server.join("/ws/lockers", self.session_id)
        self.bystander = await self.server.join("/ws/help", self.session_id)

    async def send(self, frame, as_text: bool, fragments: int = 1):
        data = frame.encode("utf-8") if isinstance(frame, str) and not as_text else frame
        if fragments > 1:
            size = -(-len(data) // fragments)
            data = [data[i : i + size] for i in range(0, len(data), size)]
        try:
            await self.victim.connection.send(data, text=as_text)
        except ConnectionClosed:
            pass  # the server closed first (a frame over the limit): read the close below

    async def example(self, frame, as_text: bool, fragments: int = 1):
        want = expected(frame, as_text)
        await self.send(frame, as_text, fragments)
        if isinstance(want, Close):
            code, _reason = await self.victim.closed()
            assert code == want.code, (want, code, frame[:300], len(frame), as_text)
            self.outcomes[f"close {code}"] += 1
            self.reconnects += 1
            self.victim = await self.server.join("/ws/lockers", self.session_id)
        else:
            got = await self.victim.recv()
            try:
                check_reply(want, got)
            except AssertionError as e:
                raise AssertionError(f"frame {frame[:300]!r} ({len(frame)} long, text={as_text}): {e}") from None
            self.outcomes[want.code or want.type] += 1
        self.examples += 1
        await self.others_unaffected(healthz=self.examples % HEALTHZ_EVERY == 0)

    async def others_unaffected(self, healthz: bool):
        marker = {"n": self.examples}
        delivered = await self.server.service.events.broadcast("/ws/help", "fuzz_check", marker)
        assert delivered == 1, delivered  # the bystander, and only it, on /ws/help
        got = await self.bystander.recv()
        assert (got["type"], got["data"], got["namespace"]) == ("fuzz_check", marker, "/ws/help"), got
        if healthz:
            response = await treq.get(self.server.http("/healthz"), persistent=False)
            body = json.loads(await treq.content(response))
            assert (response.code, body["status"]) == (200, "ok"), body

    async def finish(self):
        await self.others_unaffected(healthz=True)
        # the victim connection is still open and in step
        await self.victim.send({"type": "ping", "data": {"timestamp": "last"}})
        last = await self.victim.recv()
        assert (last["type"], last["data"]["timestamp"]) == ("pong", "last"), last
        await self.victim.close()
        await self.bystander.close()


@pytest.fixture
def fuzzer(start_server, request):
    server = run(start_server(OVERRIDES))
    session_id = run(server.session("fuzzer", "admin"))
    fuzz = Fuzzer(server, session_id, request.node.name)
    run(fuzz.start())
    yield fuzz
    run(fuzz.finish())
    print(f"\n{fuzz.name}: {fuzz.examples} examples, {fuzz.reconnects} reconnects, {dict(sorted(fuzz.outcomes.items()))}")


async def fuzz_frame(fuzz: Fuzzer, frame, as_text: bool, fragments: int = 1):
    await fuzz.example(frame, as_text, fragments)


# -- strategies --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TYPES = ["join_room", "leave_room", "ping", "resume"]
ROOMS = st.one_of(
    st.text(max_size=140),
    st.sampled_from(["", "a", "kiosk-1", "r" * 128, "r" * 129, "k\x00", "k\x1f", "k\x7f", "k\x85", "k\x9f", "k\xa0", "kiosk-ü-🔒"]),
)
JSONISH = "{}[]\":,0123456789.-+eE tfrualsn\\/" + "typeoomdaingsc_"


VALID = [
    {"type": "join_room", "room": "kiosk-1"},
    {"type": "join_room", "data": {"room": "kiosk-2"}},
    {"type": "leave_room", "room": "kiosk-1"},
    {"type": "leave_room", "data": {"room": "kiosk-2"}},
    {"type": "ping"},
    {"type": "ping", "data": {"timestamp": 1705314600000}},
    {"type": "ping", "timestamp": "2024-01-15T10:30:00.000Z"},
    {"type": "resume", "data": {"since": "1"}},
    {"type": "resume", "since": 0},
]


@st.composite
def mutated_messages(draw):
    base = draw(st.sampled_from(VALID))
    message = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set_in_data", "delete", "type", "data"]))
        key = draw(st.sampled_from(["room", "timestamp", "since", "data", "type"]) | st.text(max_size=6))
        if action == "set":
            message[key] = draw(ROOMS | json_values)
        elif action == "set_in_data":
            if not isinstance(message.get("data"), dict):
                message["data"] = {}
            message["data"][key] = draw(ROOMS | json_values)
        elif action == "delete":
            message.pop(key, None)
        elif action == "type":
            known = draw(st.sampled_from(TYPES))
            message["type"] = draw(
                st.sampled_from([known, known.upper(), f" {known}", known + "\x00", known.replace("_", "-"), "subscribe", ""])
                | st.text(max_size=12)
                | json_scalars
            )
        else:
            message["data"] = draw(json_values)
    return json.dumps(message, ensure_ascii=draw(st.booleans()))


@st.composite
def edited_messages(draw):
    """Classic fuzzing: a valid message's text with one to three characters deleted,
    inserted or replaced (often still JSON, often not, sometimes still valid)."""
    text = json.dumps(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.sampled_from(list(JSONISH)) | st.characters())
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        elif edit == "insert":
            text = text[:at] + char + text[at:]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text


@st.composite
def surrogate_messages(draw):
    """A valid message with a lone surrogate (or, as a control, a valid pair) put in one of
    its strings, escaped as JSON text allows: `\\ud800`."""
    lone = draw(st.integers(0xD800, 0xDFFF).map(chr))
    pair = draw(st.sampled_from(["😀", "🔒", "\U0010ffff"]))  # escaped as two \\uXXXX: valid
    insert = lone if draw(st.integers(0, 4)) else pair
    text = draw(st.text(max_size=6))
    cut = draw(st.integers(0, len(text)))
    odd = text[:cut] + insert + text[cut:]
    kind = draw(st.sampled_from(TYPES))
    where = draw(st.sampled_from(["type", "room", "data.room", "timestamp", "data.timestamp", "since", "data.since", "key", "data.key"]))
    message: dict = {"type": kind}
    if where == "type":
        message["type"] = odd
    elif where == "key":
        message[odd] = 1
    elif where.startswith("data."):
        name = where[5:]
        message["data"] = {odd: 1} if name == "key" else {name: odd}
    else:
        message[where] = odd
    return json.dumps(message, ensure_ascii=True)


@st.composite
def invalid_utf8_binaries(draw):
    """A valid message's UTF-8 with invalid bytes put inside one of its strings, or the
    same message in another encoding."""
    base = draw(st.sampled_from(['{"type":"ping","timestamp":"AB"}', '{"type":"join_room","room":"AB"}', '{"type":"leave_room","data":{"room":"AB"}}']))
    how = draw(st.sampled_from(["bytes", "utf16", "utf32", "bom", "cesu"]))
    if how == "utf16":
        return base.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"])))
    if how == "utf32":
        return base.encode("utf-32")
    if how == "bom":
        return b"\xef\xbb\xbf" + base.encode()
    if how == "cesu":  # a surrogate encoded as three bytes: not UTF-8
        return base.replace("AB", "A\ud83dB").encode("utf-8", "surrogatepass")
    bad = draw(
        st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc3", b"\xe2\x82"])
        | st.binary(min_size=1, max_size=4)
    )
    return base.encode().replace(b"AB", b"A" + bad + b"B")


@st.composite
def nested_frames(draw):
    depth = draw(st.integers(1, 2000) | st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    leaf = draw(st.sampled_from(["1", '"x"', "null", "[]", "{}"]))
    inner = opener * depth + leaf + closer * depth
    where = draw(st.sampled_from(["ping.timestamp", "ping.data", "join.data", "top", "unclosed"]))
    if where == "ping.timestamp":
        return '{"type":"ping","timestamp":' + inner + "}"
    if where == "ping.data":
        return '{"type":"ping","data":{"timestamp":' + inner + "}}"
    if where == "join.data":
        return '{"type":"join_room","room":"n","data":' + inner + "}"
    if where == "top":
        return inner
    return opener * depth


# -- the tests ---------------------------------------------------------------------------------


@fuzz_settings(400)
@given(frame=st.text(max_size=300) | st.text(alphabet=JSONISH, max_size=80) | edited_messages())
@pytest_twisted.ensureDeferred
async def test_random_text_frames_get_the_documented_answer(fuzzer, frame):
    await fuzz_frame(fuzzer, frame, as_text=True)


@fuzz_settings(300)
@given(frame=st.binary(max_size=300), as_text=st.booleans())
@example(frame=b"\xff\xfe\x00garbage", as_text=False)
@example(frame=b"\xff\xfe\x00garbage", as_text=True)  # a text frame that is not UTF-8: 1007
@example(frame=b'{"type":"ping"}', as_text=False)
@pytest_twisted.ensureDeferred
async def test_random_binary_frames_get_the_documented_answer(fuzzer, frame, as_text):
    await fuzz_frame(fuzzer, frame, as_text=as_text)


@fuzz_settings(200)
@given(frame=invalid_utf8_binaries(), as_text=st.booleans())
@pytest_twisted.ensureDeferred
async def test_invalid_utf8_and_other_encodings_are_refused(fuzzer, frame, as_text):
    await fuzz_frame(fuzzer, frame, as_text=as_text)


@fuzz_settings(300)
@given(
    value=json_values
    | st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    | st.fixed_dictionaries({"type": json_scalars | st.lists(json_scalars, max_size=2)}, optional={"data": json_values}),
    as_text=st.booleans(),
)
@pytest_twisted.ensureDeferred
async def test_json_of_the_wrong_shape_gets_the_documented_error(fuzzer, value, as_text):
    await fuzz_frame(fuzzer, json.dumps(value), as_text=as_text)


@fuzz_settings(400)
@given(frame=mutated_messages(), as_text=st.booleans())
@pytest_twisted.ensureDeferred
async def test_mutated_valid_messages_get_the_documented_answer(fuzzer, frame, as_text):
    await fuzz_frame(fuzzer, frame if as_text else frame.encode("utf-8"), as_text=as_text)


@fuzz_settings(150)
@given(frame=surrogate_messages(), as_text=st.booleans())
@example(frame='{"type":"join_room","room":"\\ud800"}', as_text=True)
@example(frame='{"type":"ping","timestamp":"\\udfff"}', as_text=True)
@example(frame='{"type":"\\ud800"}', as_text=True)
@example(frame='{"type":"ping","timestamp":"\\ud83d\\ude00"}', as_text=True)
@pytest_twisted.ensureDeferred
async def test_lone_surrogate_escapes_are_invalid_messages(fuzzer, frame, as_text):
    await fuzz_frame(fuzzer, frame if as_text else frame.encode("ascii"), as_text=as_text)


@fuzz_settings(100)
@given(frame=nested_frames(), as_text=st.booleans())
@example(frame="[" * 10_000, as_text=True)
@example(frame="[" * 10_000 + "]" * 10_000, as_text=True)
@example(frame='{"type":"ping","timestamp":' + "[" * 10_000 + "]" * 10_000 + "}", as_text=False)
@example(frame='{"type":"ping","timestamp":' + "[" * 126 + "]" * 126 + "}", as_text=True)  # 127 deep: answered
@example(frame='{"type":"ping","timestamp":' + "[" * 127 + "]" * 127 + "}", as_text=True)  # 128 deep: answered
@example(frame='{"type":"ping","timestamp":' + "[" * 128 + "]" * 128 + "}", as_text=True)  # 129 deep: refused
@example(frame='{"type":"ping","timestamp":' + "[" * 966 + "]" * 966 + "}", as_text=True)  # was internal_error
@example(frame="[" * 100_000, as_text=True)  # over the size limit too: 1009
@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_answered_or_refused_as_documented(fuzzer, frame, as_text):
    await fuzz_frame(fuzzer, frame if as_text else frame.encode("utf-8"), as_text=as_text)


@fuzz_settings(25)
@given(
    size=st.integers(LIMIT - 64, LIMIT + 64) | st.integers(LIMIT + 1, 4 * LIMIT),
    as_text=st.booleans(),
    fragments=st.sampled_from([1, 1, 2, 5]),
)
@example(size=LIMIT, as_text=True, fragments=1)
@example(size=LIMIT + 1, as_text=True, fragments=1)
@example(size=LIMIT + 1, as_text=False, fragments=3)  # every fragment under the limit, the message over
@example(size=10 * LIMIT, as_text=False, fragments=1)
@pytest_twisted.ensureDeferred
async def test_frames_and_messages_over_the_size_limit_close_1009(fuzzer, size, as_text, fragments):
    head = '{"type":"ping","data":{"timestamp":"big","pad":"'
    tail = '"}}'
    frame = head + "x" * max(0, size - len(head) - len(tail)) + tail
    await fuzz_frame(fuzzer, frame if as_text else frame.encode("utf-8"), as_text=as_text, fragments=fragments)


@pytest_twisted.ensureDeferred
async def test_resume_with_a_non_ascii_digit_cursor_logs_no_failure(start_server, logged_problems):
    server = await start_server(OVERRIDES)
    client = await server.join("/ws/lockers", await server.session())
    await client.send({"type": "resume", "data": {"since": "²"}})
    reply = await client.recv()
    await client.close()
    problems = [event.get("log_format") for event in logged_problems]
    logged_problems.clear()  # judged here, in the test
    assert reply["type"] == "resumed" and reply["data"]["recovered"] is False
    assert problems == []
