"""WAMP-CRA on the router: the CHALLENGE a HELLO offering `wampcra` gets (before anything is
looked up) and the check of its AUTHENTICATE; the design is in docs/wamp.md, "Authentication"."""

from __future__ import annotations

import json
import secrets

from eformws.core import wampcra, wire

WAMPCRA = "wampcra"


class CraChallenge:
    """One challenge, for the authid a HELLO gave and the WAMP session id WELCOME will have.
    It says nothing of the session the authid may name (its role is null): the router has
    looked nothing up yet, so an authid that no session has gets the same as any other."""

    __slots__ = ("authid", "session", "text")

    def __init__(self, authid: str, session: int, provider: str):
        self.authid = authid
        self.session = session
        self.text = json.dumps({
            "authid": authid,
            "authrole": None,
            "authmethod": WAMPCRA,
            "authprovider": provider,
            "nonce": secrets.token_urlsafe(24),
            "timestamp": wire.js_timestamp(),
            "session": session,
        }, separators=(",", ":"), ensure_ascii=False)

    def extra(self) -> dict:
        """CHALLENGE's extra: the challenge alone (no salt: the secret is a derived key
        already, see docs/wamp.md)."""
        return {"challenge": self.text}

    def verify(self, cra_key: str, signed) -> bool:
        """Whether AUTHENTICATE's signature signs this challenge with the authid's secret
        (constant time, no store: a wrong secret and an unknown authid alike are False)."""
        return type(signed) is str and wampcra.verify(cra_key, self.authid, self.text, signed)
