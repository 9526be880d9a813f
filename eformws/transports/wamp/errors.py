"""The error and close URIs the router answers with (WAMP Basic Profile and eform's own),
and `WampError`, which a handler raises to answer a request with ERROR."""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Any

# ABORT / GOODBYE reasons
NO_SUCH_REALM = "wamp.error.no_such_realm"
NOT_AUTHORIZED = "wamp.error.not_authorized"
AUTHENTICATION_FAILED = "wamp.error.authentication_failed"
PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
CLOSE_REALM = "wamp.close.close_realm"
GOODBYE_AND_OUT = "wamp.close.goodbye_and_out"
SYSTEM_SHUTDOWN = "wamp.close.system_shutdown"

# ERROR URIs
INVALID_URI = "wamp.error.invalid_uri"
INVALID_ARGUMENT = "wamp.error.invalid_argument"
NO_SUCH_PROCEDURE = "wamp.error.no_such_procedure"
NO_SUCH_SUBSCRIPTION = "wamp.error.no_such_subscription"
NO_SUCH_REGISTRATION = "wamp.error.no_such_registration"
INVALID_EVENT = "eform.error.invalid_event"
NO_SUCH_NAMESPACE = "eform.error.no_such_namespace"
INTERNAL = "eform.error.internal"
RATE_LIMITED = "eform.error.rate_limited"
UNAVAILABLE = "eform.error.unavailable"
IDEMPOTENCY_CONFLICT = "eform.error.idempotency_conflict"
SUBSCRIPTION_LIMIT = "eform.error.subscription_limit"
REGISTRATION_LIMIT = "eform.error.registration_limit"
CALL_LIMIT = "eform.error.call_limit"
PAYLOAD_SIZE_EXCEEDED = "wamp.error.payload_size_exceeded"
PROCEDURE_ALREADY_EXISTS = "wamp.error.procedure_already_exists"
CANCELED = "wamp.error.canceled"
TIMEOUT = "wamp.error.timeout"

MAX_ID = 2**53


_ids = random.Random(secrets.randbits(128))  # seeded by the system, drawn without a system call each


def new_id() -> int:
    """A random id from [1, 2^53], the range WAMP ids live in (global scope ids). Ids name
    things, they guard nothing: none of them is a credential."""
    return _ids.randrange(MAX_ID) + 1


def named_id(name: str) -> int:
    """An id in [1, 2^53] that is the same for `name` in every process (a subscription's,
    so the meta API of one process can speak of those of the others)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % MAX_ID + 1


class WampError(Exception):
    """Answer the request with ERROR `uri`, args `[message]` and `kwargs` (when given)."""

    def __init__(self, uri: str, message: str, **kwargs: Any):
        super().__init__(message)
        self.uri = uri
        self.message = message
        self.kwargs = kwargs or None
        self.payload: list | None = None  # the ERROR's args when they are not [message]

    @classmethod
    def relayed(cls, uri: str, args, kwargs) -> "WampError":
        """A callee's ERROR, for its caller as it came: uri, args and kwargs untouched."""
        error = cls(uri, str(args[0]) if args else uri)
        error.payload = list(args or [])
        error.kwargs = dict(kwargs) if kwargs else None
        return error
