"""Sessions: who a session id belongs to (`Session`), the `ISessionStore` seam, and
`first_valid_session`, which tries each credential candidate in order, and the rules
every store applies to a new session."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from twisted.internet.defer import inlineCallbacks
from zope.interface import Interface


@dataclass(frozen=True)
class Session:
    """A live session. The id is kept for lookups only and never shown by repr."""

    id: str = field(repr=False)
    user_id: str
    role: str
    kiosk_id: str | None
    expires_at: float


class ISessionStore(Interface):
    def lookup(session_id):
        """Deferred firing with the `Session` when `session_id` is known, live and not
        revoked, else None."""

    def ping():
        """Deferred that fires when the store answers (for /healthz)."""


def new_session_id() -> str:
    """256 random bits, URL-safe base64; never starting with `-`, which a command line
    would take for an option."""
    while True:
        session_id = secrets.token_urlsafe(32)
        if not session_id.startswith("-"):
            return session_id


def check_new_session(user_id: str, role: str, ttl: float) -> None:
    """ValueError naming what is wrong with a session about to be created."""
    from eformws.config import ROLES

    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not user_id:
        raise ValueError("user must not be empty")
    if ttl <= 0:
        raise ValueError("ttl must be positive")


@inlineCallbacks
def first_valid_session(store, candidates):
    """The first candidate the store accepts, trying each in order; None if none."""
    for candidate in candidates:
        session = yield store.lookup(candidate)
        if session is not None:
            return session
    return None
