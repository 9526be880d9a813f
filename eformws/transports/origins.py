"""The Origin allow-list (`server.allowed_origins`), one rule for WebSocket handshakes, WAMP
and the HTTP API's cookie-authenticated requests."""

from __future__ import annotations


def origin_allowed(allowed: frozenset[str], origin: str | None) -> bool:
    """An empty allow-list allows every origin. A request without `Origin` is not from a
    browser (kiosks, services, the CLI) and cannot be a cross-site request: allowed too."""
    return not allowed or not origin or origin in allowed
