"""WAMP-CRA's arithmetic, one copy for the router, the session API, the CLI and the client: a
session's authid (the SHA-256 its store keys it by), its secret (from `wamp.cra_key`), signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac


def _bytes(text: str) -> bytes:
    """UTF-8, lone surrogates included (a peer's authid or signature may hold one)."""
    return text.encode("utf-8", "surrogatepass")


def id_hash(session_id: str) -> str:
    """The hex SHA-256 of a session id: the key of its session in every store, and its
    WAMP-CRA authid (a client computes it from its session id)."""
    return hashlib.sha256(_bytes(session_id)).hexdigest()


def _hmac(key: str, text: str) -> str:
    return base64.b64encode(hmac.new(_bytes(key), _bytes(text), hashlib.sha256).digest()).decode("ascii")


def secret(cra_key: str, authid: str) -> str:
    """The WAMP-CRA secret of the session whose authid this is: base64(HMAC-SHA256(cra_key,
    authid)). Nothing is stored: the router derives it again when it checks a signature."""
    return _hmac(cra_key, authid)


def signature(secret_: str, challenge: str) -> str:
    """What AUTHENTICATE carries: base64(HMAC-SHA256(secret, challenge)), the secret's text
    (not its decoded bytes) being the key, as Autobahn's `compute_wcs` and Crossbar have it."""
    return _hmac(secret_, challenge)


def verify(cra_key: str, authid: str, challenge: str, signed: str) -> bool:
    """Whether `signed` is the signature of `challenge` by the secret of `authid`, compared in
    constant time. Needs no store: a wrong signature and an authid no session has take the
    same path."""
    return hmac.compare_digest(_bytes(signature(secret(cra_key, authid), challenge)), _bytes(signed))


def credentials(cra_key: str, session_id: str) -> dict | None:
    """The `wampcra` object issued with a new session ({authid, secret}); None when WAMP-CRA
    is not enabled (no `wamp.cra_key`)."""
    if not cra_key:
        return None
    authid = id_hash(session_id)
    return {"authid": authid, "secret": secret(cra_key, authid)}
