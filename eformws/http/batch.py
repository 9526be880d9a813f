"""A batch of events, the JSON array `POST /api/websocket/events` takes: each item checked,
appended in the array's order and answered on its own (docs/protocol.md section 7)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger

from eformws.backends.redis import RedisUnavailable
from eformws.delivery.publisher import check_idempotency_key
from eformws.events import ValidationError
from eformws.events.store import IdempotencyConflict
from eformws.http.bodies import REASONS, HTTPError, error_body, require, unavailable_message

MAX_BATCH_ITEMS = 1000  # events in one request (the body's size, server.max_body_bytes, bounds it too)

log = Logger(namespace="eformws.http.batch")


def check_batch(items: list) -> None:
    """A batch holds 1 to MAX_BATCH_ITEMS items; else the whole request is refused."""
    if not items:
        raise HTTPError(400, "body must NOT have fewer than 1 items")
    if len(items) > MAX_BATCH_ITEMS:
        raise HTTPError(400, f"body must NOT have more than {MAX_BATCH_ITEMS} items")


def _checked(item: Any, where: str) -> tuple[str, dict, str | None]:
    """(type, data, idempotency key) of one item, or the HTTPError refusing it."""
    if not isinstance(item, dict):
        raise HTTPError(400, f"{where} must be object")
    event_type = require(item, "type", str, "string", where=where)
    data = require(item, "data", dict, "object", where=where)
    key = require(item, "idempotency_key", str, "string", required=False, where=where)
    if key is not None:
        try:
            key = check_idempotency_key(key)
        except ValueError:
            raise HTTPError(400, f"{where}/idempotency_key must be 1 to 255 visible ASCII characters") from None
    return event_type, data, key


def append_batch(events, items: list) -> Deferred:
    """Start every item's append, in the array's order (so stored items get increasing
    seqs and are delivered in that order), then fire with one answer per item:
    `{"statusCode": 201, "event": <stored envelope>, "replayed": bool}` or the error body a
    single event would have had (`statusCode`, `error`, `message`, maybe `field`)."""
    pending: list = []
    for index, item in enumerate(items):
        try:
            event_type, data, key = _checked(item, f"body/{index}")
        except HTTPError as e:
            pending.append(e)
            continue
        pending.append(events.append(event_type, data, key))
    done = DeferredList([d for d in pending if isinstance(d, Deferred)], consumeErrors=True)
    done.addCallback(lambda results: _answers(pending, iter(results)))
    return done


def _answers(pending: list, results) -> list[dict]:
    answers = []
    for entry in pending:
        if isinstance(entry, HTTPError):
            answers.append(error_body(entry.status, entry.message, **entry.extra))
            continue
        ok, result = next(results)
        if ok:
            answers.append({"statusCode": 201, "event": result.envelope, "replayed": result.replayed})
        else:
            answers.append(_failed(result))
    return answers


def _failed(failure) -> dict:
    """What a single event's request would have answered for this append's failure. A
    request its client gave up on (the connection gone) is cancelled: its appends go on
    (they are shielded) and nobody reads the answer, so nothing is logged for them."""
    error = failure.value
    if isinstance(error, CancelledError):
        return error_body(503, "the request was given up before this item was answered")
    if isinstance(error, ValidationError):
        return error_body(400, str(error), field=error.field)
    if isinstance(error, IdempotencyConflict):
        return error_body(409, "Idempotency-Key was already used for a different event")
    if isinstance(error, RedisUnavailable):
        return error_body(503, unavailable_message(error))
    log.failure("unexpected error appending an event of a batch", failure=failure)
    return error_body(500, REASONS[500])
