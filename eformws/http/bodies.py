"""Request bodies of the HTTP API: the JSON body, its fields checked, and the error
(status, message, `field`) a refused one is answered with."""

from __future__ import annotations

import json
from typing import Any

from eformws.core import wire
from eformws.events.store.redis import EmitTimeout, EmitUnconfirmed

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HTTPError(Exception):
    """A refusal: the status, the message and extra fields of its body (`field`)."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def json_body(request, max_bytes: int, arrays: bool = False) -> dict | list:
    """The request body as a JSON object (or, with `arrays`, an array), or an HTTPError
    naming the first problem."""
    if getattr(request, "body_too_large", False):
        raise HTTPError(413, f"body must be at most {max_bytes} bytes")
    raw = request.content.read() if request.content is not None else b""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPError(400, "body must be valid JSON") from None
    if not isinstance(body, dict) and not (arrays and isinstance(body, list)):
        raise HTTPError(400, "body must be object or array" if arrays else "body must be object")
    # A batch's items are each checked on their own (an event's data nested too deep is that
    # item's 400, and nothing else of an item is ever encoded again).
    if isinstance(body, dict) and wire.may_nest_deeper_than(raw) and wire.nested_deeper_than(body):
        # Deeper bodies parse, then fail to encode (a 500 at delivery) near the recursion limit.
        raise HTTPError(400, f"body must not nest arrays and objects more than {wire.MAX_DEPTH} levels deep")
    return body


def printable(value: Any) -> Any:
    """Error text that quotes the request (an unknown namespace, a field name) may hold a
    lone surrogate, which UTF-8 cannot carry: such characters are written as `\\udXXX`."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def require(body: dict, name: str, kind: type, kind_name: str, required: bool = True, where: str = "body") -> Any:
    """`body[name]` if it is a `kind`; else an HTTPError saying so of `where` (the body, or
    `body/3`, the item of a batch)."""
    if name not in body:
        if required:
            raise HTTPError(400, f"{where} must have required property '{name}'")
        return None
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise HTTPError(400, f"{where}/{name} must be {kind_name}")
    return value


def require_field(body: dict, name: str, kind, kind_name: str, required: bool = True) -> Any:
    """As `require`, its 400 naming the offending `field` (`body/<name>`)."""
    try:
        return require(body, name, kind, kind_name, required)
    except HTTPError as e:
        e.extra["field"] = f"body/{name}"
        raise


def error_body(status: int, message: str, **extra) -> dict:
    """The JSON body of a refusal (of a request, or of one item of a batch)."""
    extra = {name: printable(value) for name, value in extra.items() if value is not None}
    return {"statusCode": status, "error": REASONS[status], "message": printable(message), **extra}


def unavailable_message(error) -> str:
    """The 503's message for a store in Redis that could not answer: an emit not written in
    time says so (and whether it may have been stored) in its own words."""
    return str(error) if isinstance(error, (EmitTimeout, EmitUnconfirmed)) else "Redis is unreachable; try again"
