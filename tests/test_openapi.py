"""The HTTP API against its OpenAPI 3.1 document, docs/openapi.yaml: the document is valid
and names exactly the routes of eformws/http/api.py with every status each can answer;
schemathesis fuzzes a real `twistd -n eformws` process with an API token, an admin session,
a kiosk session and no credentials (no 5xx, every status, content type, header and body as
documented); and the answers schemathesis cannot provoke (413, 404 for unknown paths, 405,
values that cannot be framed, lone surrogates quoted back, an admin's revoke) are checked
against the same schemas by hand.

The admin session's run leaves out the session writes, `POST /api/websocket/sessions` and
`DELETE /api/websocket/sessions/{ref}`: schemathesis reuses what answers give it, so it
sends the id of a session it created as the `sessionId` cookie and query (tried before the
bearer admin session: from then on it is that kiosk or staff session, 403), and it may
follow the references of `GET /api/websocket/sessions` into a revoke of the very session
it runs with (401 from then on). The API token's run fuzzes both (a token is checked
before any session and cannot be revoked); an admin's create and revoke are checked by
hand.

schemathesis runs as its CLI in a subprocess through the reactor (its pytest integration
does not fit pytest-twisted's asyncio reactor), deterministic, with a bounded number of
examples per operation; its JSON and HAR reports tell what was generated and answered."""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
import yaml
from jsonschema import Draft202012Validator
from processes import _reactor, create_session, environment, write_config
from twisted.internet.utils import getProcessOutputAndValue

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)
MAX_EXAMPLES = 20  # per operation and phase: about 500 requests, 3 to 6 seconds a run
TOKEN = "tok-openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Every status each operation can answer (read from eformws/http/api.py); the document must
# list exactly these, so a new error path or a removed one shows up here.
STATUSES = {
    ("/api/websocket/status", "get"): {"200", "400", "401", "403", "503"},
    ("/api/websocket/broadcast", "post"): {"200", "400", "401", "403", "404", "413", "503"},
    ("/api/websocket/events", "post"): {"200", "201", "400", "401", "403", "409", "413", "503"},
    ("/api/websocket/health", "get"): {"200", "401", "503"},
    ("/api/websocket/session", "get"): {"200", "401", "503"},
    ("/api/websocket/sessions", "get"): {"200", "401", "403", "503"},
    ("/api/websocket/sessions", "post"): {"201", "400", "401", "403", "413", "503"},
    ("/api/websocket/sessions/{ref}", "delete"): {"200", "400", "401", "403", "404", "503"},
    ("/healthz", "get"): {"200", "503"},
}
REVOKE = "/api/websocket/sessions/{ref}"


@pytest.fixture(scope="module")
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


def validator(document: dict, schema: dict) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for `schema`, resolving `#/components/...` in the document."""
    root = {**schema, "components": document["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def deref(document: dict, node: dict) -> dict:
    """Follow a local `$ref` (`#/components/responses/X`) to what it names."""
    while isinstance(node, dict) and "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def assert_documented(document: dict, path: str, method: str, code: int, headers, raw: bytes) -> None:
    """The answer's status is one the document lists for the operation (or the document's
    NotFound/MethodNotAllowed responses for `None` operations), and its content type,
    Cache-Control header and body match what the document says for that status."""
    if path is None:
        response = deref(document, {"$ref": f"#/components/responses/{method}"})
    else:
        responses = document["paths"][path][method]["responses"]
        assert str(code) in responses, f"{method.upper()} {path} answered {code}, not documented: {raw[:300]!r}"
        response = deref(document, responses[str(code)])
    assert headers.getRawHeaders("content-type") == ["application/json"], headers
    assert headers.getRawHeaders("cache-control") == ["no-store"], headers
    body = json.loads(raw)
    schema = response["content"]["application/json"]["schema"]
    errors = sorted(validator(document, schema).iter_errors(body), key=str)
    assert not errors, f"{code} body {body!r} breaks the document: {[e.message for e in errors]}"


# -- the document ----------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(document):
    from openapi_spec_validator import validate

    assert document["openapi"].startswith("3.1")
    validate(document)


def test_document_has_exactly_the_routes_of_the_api():
    from eformws.http.api import Api  # imported late: Klein must find the asyncio reactor installed

    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())  # werkzeug's <ref> is OpenAPI's {ref}
        for rule in Api.app.url_map.iter_rules()
        for method in rule.methods
        if method != "HEAD"  # werkzeug adds HEAD to every GET
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}
    assert documented == routes
    assert set(STATUSES) == routes


@pytest.mark.parametrize("operation", sorted(STATUSES), ids=lambda o: f"{o[1].upper()} {o[0]}")
def test_document_lists_every_status_the_operation_can_answer(document, operation):
    path, method = operation
    responses = document["paths"][path][method]["responses"]
    assert set(responses) == STATUSES[operation]
    for code, response in responses.items():
        response = deref(document, response)
        assert set(response["content"]) == {"application/json"}, (operation, code)
        assert "Cache-Control" in response["headers"], (operation, code)


def test_every_error_schema_is_the_common_error_shape(document):
    schemas = document["components"]["schemas"]
    common = validator(document, {"$ref": "#/components/schemas/Error"})
    for name in ("Error400", "EventError400", "SessionError400", "Error401", "Error403", "Error404", "Error405", "Error413", "Error503"):
        schema = schemas[name]
        assert schema["required"] == ["statusCode", "error", "message"], name
        assert schema["additionalProperties"] is False, name
    sample = {"statusCode": 404, "error": "Not Found", "message": "Not Found"}
    assert common.is_valid(sample)
    assert not common.is_valid({**sample, "extra": 1})


def test_event_request_schema_accepts_the_documented_examples_and_refuses_drift(document):
    content = document["paths"]["/api/websocket/events"]["post"]["requestBody"]["content"]["application/json"]
    body = validator(document, content["schema"])
    for example in content["examples"].values():
        assert body.is_valid(example["value"]), example
    events = validator(document, {"$ref": "#/components/schemas/EventRequest"})
    good = {"type": "system_status", "data": {"component": "kiosk", "status": "online", "health_score": 99}}
    assert not events.is_valid({**good, "type": "unknown"})
    assert not events.is_valid({**good, "data": {**good["data"], "health_score": 101}})
    assert not events.is_valid({**good, "data": {**good["data"], "extra": 1}})
    batch = validator(document, {"$ref": "#/components/schemas/EventBatch"})
    assert batch.is_valid([good, {**good, "idempotency_key": "k-1"}])
    assert not batch.is_valid([])
    assert not batch.is_valid([{**good, "idempotency_key": ""}])
    assert not batch.is_valid([{**good, "type": "unknown"}])


# -- schemathesis against a real process ---------------------------------------------------


def operation_path(path: str) -> str:
    """The document's path of a requested one (`/api/websocket/sessions/<any ref>`: REVOKE)."""
    return REVOKE if path.startswith(REVOKE.removesuffix("{ref}")) else path


def statuses_of(har: dict) -> collections.Counter:
    """(method, operation path, status) of every exchange a HAR report recorded."""
    return collections.Counter(
        (entry["request"]["method"], operation_path(urlsplit(entry["request"]["url"]).path),
         entry["response"]["status"])
        for entry in har["log"]["entries"]
    )


async def schemathesis_run(url: str, headers: list[str], workdir: Path,
                           options: tuple[str, ...] = ()) -> tuple[dict, collections.Counter, str]:
    """`schemathesis run` against `url` (with more `options`); (its JSON report, statuses
    seen, its output)."""
    reports = workdir / "reports"
    args = [
        "run", str(DOCUMENT),
        "--url", url,
        "--checks", CHECKS,
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "10",
        "--no-color",
        "--report", "json,har",
        "--report-dir", str(reports),
    ]
    for header in headers:
        args += ["-H", header]
    args += options
    d = getProcessOutputAndValue(SCHEMATHESIS, args, env=environment(), path=str(workdir), reactor=_reactor())
    d.addTimeout(120, _reactor())
    out, err, code = await d
    output = (out + err).decode("utf-8", "replace")
    summaries = list(reports.glob("json-*.json"))
    hars = list(reports.glob("har-*.json"))
    assert len(summaries) == 1 and len(hars) == 1, output
    summary = json.loads(summaries[0].read_text())
    seen = statuses_of(json.loads(hars[0].read_text()))
    assert code == 0, output
    return summary, seen, output


# What each kind of caller must have been answered at least once, so that a run that
# never got past authentication (or never reached the 2xx paths) cannot pass unnoticed.
EXPECTED = {
    "api_token": {
        ("GET", "/api/websocket/status", 200),
        ("GET", "/healthz", 200),
        ("POST", "/api/websocket/broadcast", 200),
        ("POST", "/api/websocket/broadcast", 400),
        ("POST", "/api/websocket/broadcast", 404),
        ("POST", "/api/websocket/events", 201),
        ("POST", "/api/websocket/events", 400),
        ("GET", "/api/websocket/health", 401),  # an API token is not a session
        ("GET", "/api/websocket/session", 401),
        ("GET", "/api/websocket/sessions", 200),
        ("POST", "/api/websocket/sessions", 201),
        ("POST", "/api/websocket/sessions", 400),
        ("DELETE", REVOKE, 404),
    },
    "admin_session": {
        ("POST", "/api/websocket/broadcast", 200),
        ("POST", "/api/websocket/events", 201),
        ("GET", "/api/websocket/health", 200),
        ("GET", "/api/websocket/session", 200),
        ("GET", "/api/websocket/sessions", 200),
    },
    "kiosk_session_cookie": {
        ("POST", "/api/websocket/broadcast", 403),
        ("POST", "/api/websocket/events", 403),
        ("GET", "/api/websocket/health", 200),
        ("GET", "/api/websocket/session", 200),
        ("GET", "/api/websocket/sessions", 403),
        ("POST", "/api/websocket/sessions", 403),
        ("DELETE", REVOKE, 403),
    },
    "no_credentials": {
        ("GET", "/api/websocket/status", 200),
        ("GET", "/healthz", 200),
        ("POST", "/api/websocket/broadcast", 401),
        ("POST", "/api/websocket/events", 401),
        ("GET", "/api/websocket/health", 401),
        ("GET", "/api/websocket/session", 401),
        ("GET", "/api/websocket/sessions", 401),
        ("POST", "/api/websocket/sessions", 401),
        ("DELETE", REVOKE, 401),
    },
}


@pytest.mark.slow  # ~10-15 s a caller: schemathesis against a real twistd
@pytest.mark.parametrize("caller", list(EXPECTED))
@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_the_live_api_as_documented(spawn, tmp_path, caller):
    config = write_config(tmp_path, f"[auth]\napi_tokens = [{json.dumps(TOKEN)}]\n")
    gateway = await spawn(["--config", str(config)], tmp_path)
    if caller == "api_token":
        headers = [f"Authorization: Bearer {TOKEN}"]
    elif caller == "admin_session":
        headers = [f"Authorization: Bearer {await create_session(tmp_path, config, 'alice', 'admin')}"]
    elif caller == "kiosk_session_cookie":
        headers = [f"Cookie: sessionId={await create_session(tmp_path, config, 'kiosk-1', 'kiosk')}"]
    else:
        headers = []
    # The admin's run must stay that admin: no session writes (see the module's docstring).
    writes = ("--exclude-operation-id", "createSession", "--exclude-operation-id", "revokeSession")
    options = writes if caller == "admin_session" else ()

    summary, seen, output = await schemathesis_run(gateway.http(""), headers, tmp_path, options)

    cases = summary["test_cases"]
    assert summary["operations"]["tested"] == len(STATUSES) - (2 if options else 0), output
    assert cases["with_failures"] == 0 and cases["errored"] == 0, output
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert cases["generated"] >= 200, output
    assert not [key for key in seen if key[2] >= 500], seen
    missing = EXPECTED[caller] - set(seen)
    assert not missing, f"never answered: {sorted(missing)}; seen: {sorted(seen.items())}"
    print(f"schemathesis ({caller}): {cases['generated']} test cases, {sum(seen.values())} requests")

    # the process is still serving and logged no traceback
    response = await aio_get(gateway.http("/healthz"))
    assert response[0] == 200
    assert "Traceback" not in gateway.process.log, gateway.process.log[-4000:]


async def aio_get(url: str) -> tuple[int, bytes]:
    response = await treq.get(url, persistent=False)
    return response.code, await treq.content(response)


# -- what schemathesis cannot provoke, checked against the same document --------------------


async def request(server, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
    response = await treq.request(
        method, server.http(path), data=data, headers={"Content-Type": "application/json", **(headers or {})}, persistent=False
    )
    return response.code, response.headers, await treq.content(response)


@pytest_twisted.async_fixture
async def tokened(start_server):
    return await start_server({"auth.api_tokens": [TOKEN]})


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", ["/nope", "/api", "/api/", "/api/websocket", "/api/websocket/statusx", "/healthz/x", "/api/websocket/status/", "/wamp/x"])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_answer_the_documented_404(tokened, document, path):
    code, headers, raw = await request(tokened, "GET", path)
    assert code == 404
    assert_documented(document, None, "NotFound", code, headers, raw)
    assert json.loads(raw) == {"statusCode": 404, "error": "Not Found", "message": "Not Found"}


@pytest.mark.parametrize(
    "method,path",
    [("POST", "/api/websocket/status"), ("GET", "/api/websocket/broadcast"), ("PUT", "/api/websocket/events"),
     ("DELETE", "/healthz"), ("OPTIONS", "/api/websocket/health")],
)
@pytest_twisted.ensureDeferred
async def test_wrong_methods_answer_the_documented_405(tokened, document, method, path):
    code, headers, raw = await request(tokened, method, path)
    assert code == 405
    assert_documented(document, None, "MethodNotAllowed", code, headers, raw)


@pytest.mark.parametrize("path", ["/api/websocket/broadcast", "/api/websocket/events", "/api/websocket/sessions"])
@pytest_twisted.ensureDeferred
async def test_bodies_over_the_limit_answer_the_documented_413(tokened, document, path):
    code, headers, raw = await request(tokened, "POST", path, raw=b"x" * 70_000, headers=AUTH)
    assert code == 413
    assert_documented(document, path, "post", code, headers, raw)


# Values JSON text can carry but a frame cannot: before the fix each was accepted, then
# failed when framed (a 500 with a listener connected, silently dropped without one), and
# an unknown namespace or property quoted back with a lone surrogate failed the error body.
UNSENDABLE_BROADCASTS = {
    "nan_in_data": (b'{"namespace":"/ws/lockers","event":"e","data":{"x":NaN}}', 400, "body/data.x must be a finite number, got nan"),
    "infinity_in_list": (b'{"namespace":"/ws/lockers","event":"e","data":{"x":[1,-Infinity]}}', 400, "body/data.x[1] must be a finite number, got -inf"),
    "1e400_in_data": (b'{"namespace":"/ws/lockers","event":"e","data":{"x":1e400}}', 400, "body/data.x must be a finite number, got inf"),
    "integer_beyond_a_double": (b'{"namespace":"/ws/lockers","event":"e","data":{"x":1' + b"0" * 400 + b'}}', 400,
                                "body/data.x must be a finite number (this integer is beyond a double)"),
    "surrogate_in_value": (b'{"namespace":"/ws/lockers","event":"e","data":{"x":"a\\ud800"}}', 400, "body/data.x must be valid Unicode text, got 'a\\ud800'"),
    "surrogate_in_key": (b'{"namespace":"/ws/lockers","event":"e","data":{"\\udfff":1}}', 400, "body/data must be valid Unicode text, got '\\udfff'"),
    "surrogate_in_event": (b'{"namespace":"/ws/lockers","event":"\\ud800","data":{}}', 400, "body/event must be valid Unicode text, got '\\ud800'"),
    "surrogate_in_room": (b'{"namespace":"/ws/lockers","event":"e","data":{},"room":"k\\ud800"}', 400, "body/room: Room must be valid Unicode text"),
    "surrogate_in_namespace": (b'{"namespace":"/ws/\\ud800","event":"e","data":{}}', 404, "Unknown namespace: /ws/\\ud800"),
}


@pytest.mark.parametrize("raw,code,message", list(UNSENDABLE_BROADCASTS.values()), ids=list(UNSENDABLE_BROADCASTS))
@pytest_twisted.ensureDeferred
async def test_broadcast_of_what_cannot_be_framed_is_refused_as_documented(tokened, document, raw, code, message):
    server = tokened
    session_id = await server.session()
    listener = await server.join("/ws/lockers", session_id)  # a recipient: framing would happen
    answer, headers, body = await request(server, "POST", "/api/websocket/broadcast", raw=raw, headers=AUTH)
    assert (answer, json.loads(body)["message"]) == (code, message), body
    assert_documented(document, "/api/websocket/broadcast", "post", answer, headers, body)
    # nothing was delivered: the listener's next message is the pong of its own ping
    await listener.send({"type": "ping", "data": {"timestamp": "after"}})
    reply = await listener.recv()
    assert (reply["type"], reply["data"]["timestamp"]) == ("pong", "after"), reply
    status, headers, raw_status = await request(server, "GET", "/api/websocket/status")
    assert_documented(document, "/api/websocket/status", "get", status, headers, raw_status)
    await listener.close()


def nested(depth: int) -> str:
    """`data` whose value `x` is `depth - 2` arrays deep: the body is `depth` levels deep."""
    inner = depth - 2
    return '{"namespace":"/ws/lockers","event":"e","data":{"x":' + "[" * inner + "]" * inner + "}}"


@pytest.mark.parametrize("depth,code", [(128, 200), (129, 400), (950, 400), (5000, 400)])
@pytest_twisted.ensureDeferred
async def test_broadcast_nesting_is_bounded_as_documented(tokened, document, depth, code):
    """Before the bound, a body about 950 levels deep parsed, then failed to encode when framed
    for a listener: a 500 (the depth depended on the stack)."""
    server = tokened
    listener = await server.join("/ws/lockers", await server.session())
    answer, headers, body = await request(server, "POST", "/api/websocket/broadcast", raw=nested(depth).encode(), headers=AUTH)
    assert answer == code, body
    assert_documented(document, "/api/websocket/broadcast", "post", answer, headers, body)
    if code == 400:
        assert json.loads(body)["message"] in (
            "body must not nest arrays and objects more than 128 levels deep",
            "body must be valid JSON",  # too deep for the parser itself
        )
    else:
        got = await listener.recv()
        assert got["type"] == "e"
    await listener.close()


@pytest_twisted.ensureDeferred
async def test_event_with_a_lone_surrogate_property_name_is_a_documented_400(tokened, document):
    raw = b'{"type":"system_status","data":{"component":"kiosk","status":"online","health_score":9,"\\ud800":1}}'
    code, headers, body = await request(tokened, "POST", "/api/websocket/events", raw=raw, headers=AUTH)
    assert code == 400
    assert_documented(document, "/api/websocket/events", "post", code, headers, body)
    assert json.loads(body) == {
        "statusCode": 400,
        "error": "Bad Request",
        "message": "data.\\ud800 is not a known property",
        "field": "data.\\ud800",
    }


@pytest_twisted.ensureDeferred
async def test_documented_request_examples_are_answered_as_documented(tokened, document):
    for path in ("/api/websocket/broadcast", "/api/websocket/events", "/api/websocket/sessions"):
        operation = document["paths"][path]["post"]
        for example in operation["requestBody"]["content"]["application/json"]["examples"].values():
            code, headers, raw = await request(tokened, "POST", path, example["value"], headers=AUTH)
            assert code in (200, 201), raw
            assert_documented(document, path, "post", code, headers, raw)


@pytest_twisted.ensureDeferred
async def test_an_admins_create_and_revoke_are_answered_as_documented(tokened, document):
    """What the admin's schemathesis run leaves out (see the module's docstring)."""
    admin = {"Authorization": f"Bearer {await tokened.session('alice', 'admin')}"}
    for body, expected in (({"user_id": "k", "role": "kiosk"}, 400), ({"user_id": "bob", "role": "staff"}, 201)):
        code, headers, raw = await request(tokened, "POST", "/api/websocket/sessions", body, headers=admin)
        assert code == expected, raw
        assert_documented(document, "/api/websocket/sessions", "post", code, headers, raw)
    ref = json.loads(raw)["ref"]
    for expected in (200, 404):  # revoked, then no longer live
        code, headers, raw = await request(tokened, "DELETE", f"/api/websocket/sessions/{ref}", headers=admin)
        assert code == expected, raw
        assert_documented(document, REVOKE, "delete", code, headers, raw)
    code, headers, raw = await request(tokened, "GET", "/api/websocket/sessions", headers=admin)
    assert_documented(document, "/api/websocket/sessions", "get", code, headers, raw)
    assert [s["state"] for s in json.loads(raw)["sessions"]] == ["live", "revoked"]


@pytest_twisted.ensureDeferred
async def test_a_create_with_wamp_cra_enabled_is_answered_as_documented(start_server, document):
    server = await start_server({"auth.api_tokens": [TOKEN], "wamp.cra_key": "k" * 32})
    code, headers, raw = await request(server, "POST", "/api/websocket/sessions", {"user_id": "bob", "role": "staff"},
                                       headers=AUTH)
    assert code == 201 and "wampcra" in json.loads(raw), raw
    assert_documented(document, "/api/websocket/sessions", "post", code, headers, raw)
