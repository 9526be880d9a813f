"""Sessions: who a session id belongs to (`Session`), the seams `ISessionStore` (what
connections and /healthz use) and `ISessionAdmin` (what `eformws sessions` and the HTTP
API's session endpoints use), `first_valid_session`, which tries each credential candidate
in order, the rules every store applies to a new session, and those of a session asked for
(CLI and HTTP API)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from twisted.internet.defer import inlineCallbacks
from zope.interface import Interface

from eformws.core import wire
from eformws.core.policy import ROLES
from eformws.core import wampcra
from eformws.core.wampcra import id_hash

ID_HASH_LENGTH = 64  # hex digits of a SHA-256
REF_LENGTH = 12  # hex digits of the hash that `sessions list` shows as a session's reference


@dataclass(frozen=True)
class Session:
    """A live session. The id is kept for lookups only and never shown by repr; it is None
    for a session found by the hash of its id (WAMP-CRA), which `id_hash` always has."""

    id: str | None = field(repr=False)
    user_id: str
    role: str
    kiosk_id: str | None
    expires_at: float
    id_hash: str = field(default="", repr=False, compare=False)

    def __post_init__(self):
        if not self.id_hash and self.id is not None:
            object.__setattr__(self, "id_hash", id_hash(self.id))


class ISessionStore(Interface):
    """Who a session id belongs to: what handshakes, WAMP authentication, the session
    recheck (`SessionWatch`) and /healthz ask of the store the server runs on."""

    def lookup(session_id):
        """Deferred firing with the `Session` when `session_id` is known, live and not
        revoked, else None."""

    def lookup_hash(hashed):
        """As `lookup`, by the hex SHA-256 of the id (`id_hash`, a WAMP-CRA authid); the
        Session's `id` is None (the store never had it)."""

    def ping():
        """Deferred that fires when the store answers (for /healthz)."""


class ISessionAdmin(Interface):
    """Sessions made, listed and revoked: `eformws sessions create|list|revoke` (on a
    Redis store; on SQLite the command uses the same functions on the file), the HTTP
    API's /api/websocket/sessions endpoints and the demo's simulated clients, which
    create their own. A listed session is a `SessionRow`
    (eformws.sessions.sqlite): a reference, a prefix of the SHA-256 of its id, never the
    id itself."""

    def create(user_id, role, kiosk_id=None, ttl=86400.0):
        """Deferred firing with the new `Session` (its id is known only to the caller);
        failing with `SessionError` for what `check_new_session` refuses."""

    def list():
        """Deferred firing with every stored session as a `SessionRow`, oldest first."""

    def revoke(id_or_ref):
        """Deferred firing with 1 when a session was revoked by id or listed reference, else 0."""

    def revoke_row(id_or_ref):
        """As `revoke`; Deferred firing with the `SessionRow` revoked, else None."""


def new_session_id() -> str:
    """256 random bits, URL-safe base64; never starting with `-`, which a command line
    would take for an option."""
    while True:
        session_id = secrets.token_urlsafe(32)
        if not session_id.startswith("-"):
            return session_id


MAX_TTL = 10 * 365 * 86400  # seconds: the longest session (and sessions.default_ttl) there may be

# How SessionError messages name each value; callers name them as their users give them
# (`eformws sessions create`: --user, ...; the HTTP API: body/user_id, ...).
FIELD_NAMES = {"user_id": "user", "role": "role", "kiosk_id": "kiosk id", "ttl": "ttl"}


class SessionError(ValueError):
    """What is wrong with a session about to be created; `field` is the value's key
    (user_id, role, kiosk_id or ttl)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.field = key


def _unicode(value: str | None) -> bool:
    """Text UTF-8 can carry (no lone surrogate: SQLite and Redis cannot store one), or None."""
    if value is None:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_new_session(user_id: str, role: str, ttl: float, kiosk_id: str | None = None,
                      names: dict[str, str] | None = None) -> None:
    """SessionError naming what is wrong with a session about to be created: what every
    store refuses."""
    name = {**FIELD_NAMES, **(names or {})}
    for key, value in (("user_id", user_id), ("kiosk_id", kiosk_id)):
        if not _unicode(value):
            raise SessionError(key, f"{name[key]} must be valid Unicode text")
    if not user_id:
        raise SessionError("user_id", f"{name['user_id']} must not be empty")
    if role not in ROLES:
        raise SessionError("role", f"{name['role']} must be one of {', '.join(ROLES)}, got {role!r}")
    if not 0 < ttl <= MAX_TTL:  # NaN and infinities fail too
        raise SessionError("ttl", f"{name['ttl']} must be a number of seconds above 0 and at most {MAX_TTL}, "
                                  f"got {ttl!r}")


def check_session_request(user_id: str, role: str, kiosk_id: str | None, ttl: float,
                          names: dict[str, str] | None = None) -> None:
    """What may be asked for (`eformws sessions create`, POST /api/websocket/sessions):
    what every store accepts, and a kiosk session names its kiosk (its own kiosk's room is
    the one room it may join besides the default); user and kiosk ids are names as rooms
    are (at most 128 characters, no control characters), so logs and pages can show them."""
    check_new_session(user_id, role, ttl, kiosk_id, names)
    name = {**FIELD_NAMES, **(names or {})}
    if role == "kiosk" and not kiosk_id:
        raise SessionError("kiosk_id", f"a kiosk session needs {name['kiosk_id']} (its own kiosk's room is the one "
                                       "room it may join besides the default)")
    for key, value in (("user_id", user_id), ("kiosk_id", kiosk_id)):
        if value is None:
            continue
        problem = wire.name_problem(value, wire.MAX_ROOM_LENGTH) or (None if value.strip() else "must not be blank")
        if problem:
            raise SessionError(key, f"{name[key]} {problem}")


def issued(session: Session, cra_key: str = "") -> dict:
    """What creating a session answers (POST /api/websocket/sessions, `eformws sessions
    create --json`), the one place its id is ever shown; with `wampcra` ({authid, secret},
    docs/wamp.md) when WAMP-CRA is enabled (`wamp.cra_key`)."""
    answer = {
        "id": session.id,
        "ref": session.id_hash[:REF_LENGTH],
        "user_id": session.user_id,
        "role": session.role,
        "kiosk_id": session.kiosk_id,
        "expires_at": wire.js_timestamp(session.expires_at),
    }
    cra = wampcra.credentials(cra_key, session.id)  # (not `credentials`: a module of this package has the name)
    if cra is not None:
        answer["wampcra"] = cra
    return answer


def is_id_hash(text) -> bool:
    """Whether `text` can be an `id_hash` (64 lowercase hex digits): anything else is no
    session's, and is not looked up."""
    return (type(text) is str and len(text) == ID_HASH_LENGTH and text.isascii()
            and not text.strip("0123456789abcdef"))


def lookup_again(store, session: Session):
    """Deferred firing with `session` as the store has it now (None when gone, expired or
    revoked): by its id, or by its id's hash when it was found so."""
    return store.lookup(session.id) if session.id is not None else store.lookup_hash(session.id_hash)


@inlineCallbacks
def first_valid_session(store, candidates):
    """The first candidate the store accepts, trying each in order; None if none."""
    for candidate in candidates:
        session = yield store.lookup(candidate)
        if session is not None:
            return session
    return None
