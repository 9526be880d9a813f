"""Where a session id can come from in an HTTP or WebSocket handshake: cookies (parsed per
RFC 6265), `Authorization: Bearer`, and `?sessionId=`, in that order of trial."""

from __future__ import annotations

from typing import Iterable

MAX_CANDIDATES = 8


def cookie_values(headers: Iterable[str], names: Iterable[str]) -> list[str]:
    """Values of the cookies called `names`, in header order; exact names, no decoding."""
    wanted = set(names)
    values = []
    for header in headers:
        # RFC 6265 cookie-octets exclude ',' and ';', so both separate pairs (joined headers).
        for pair in header.replace(",", ";").split(";"):
            name, sep, value = pair.strip().partition("=")
            if not sep or name.strip() not in wanted:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def bearer_token(headers: Iterable[str]) -> list[str]:
    tokens = []
    for header in headers:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            tokens.append(token.strip())
    return tokens


def candidates(
    cookie_headers: Iterable[str],
    authorization_headers: Iterable[str],
    query_values: Iterable[str],
    cookie_names: Iterable[str],
) -> list[str]:
    """Distinct, plausible candidates in the order they are tried; empty when none present."""
    ordered = [
        *cookie_values(cookie_headers, cookie_names),
        *bearer_token(authorization_headers),
        *query_values,
    ]
    seen: list[str] = []
    for value in ordered:
        if value and value not in seen:
            seen.append(value)
    return seen[:MAX_CANDIDATES]
