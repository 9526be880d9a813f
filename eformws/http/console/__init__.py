"""The staff console: its page, script and style (shipped in `static/`, no build step)
served under `/console` with strict security headers, and the redirect of `/` to it."""

from __future__ import annotations

import re
from importlib import resources

from twisted.web.resource import Resource

from eformws.core import wire

PATH = b"/console"

# name under /console/ -> (file in static/, Content-Type); "" is the page itself.
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
    "icon.svg": ("icon.svg", "image/svg+xml"),
}

# A Host header fit to be named in the policy: a DNS name or an address, and a port.
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")

REASONS = {404: "Not Found", 405: "Method Not Allowed"}


def content_security_policy(host: bytes | None) -> bytes:
    """Own files only, no inline script or style, no framing, no form posts; fetch and
    WebSocket to this origin only (named with ws:/wss: for browsers whose 'self' does not
    cover WebSocket schemes; the Host header is named only when it is a plain host)."""
    connect = b"'self'"
    if host and _HOST.fullmatch(host):
        connect += b" ws://" + host + b" wss://" + host
    return b"; ".join([
        b"default-src 'self'",
        b"script-src 'self'",
        b"style-src 'self'",
        b"img-src 'self'",
        b"connect-src " + connect,
        b"object-src 'none'",
        b"base-uri 'none'",
        b"form-action 'none'",
        b"frame-ancestors 'none'",
    ])


def secure_headers(request) -> None:
    """The headers every console response carries, errors and the redirect included."""
    request.setHeader(b"Content-Security-Policy", content_security_policy(request.getHeader(b"host")))
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Cross-Origin-Opener-Policy", b"same-origin")
    request.setHeader(b"Cross-Origin-Resource-Policy", b"same-origin")
    request.setHeader(b"Permissions-Policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()")
    request.setHeader(b"Cache-Control", b"no-store")


def _error(request, status: int) -> bytes:
    """The API's error body (docs/protocol.md section 7), so unknown paths look alike."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    if status == 405:
        request.setHeader(b"Allow", b"GET, HEAD")
    return wire.dumps({"statusCode": status, "error": REASONS[status], "message": REASONS[status]})


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class ConsoleResource(Resource):
    """`/console` and `/console/` (the page) and its files by name; nothing else."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self._files = {name: (_read(file), kind.encode("ascii")) for name, (file, kind) in FILES.items()}

    def render(self, request):
        secure_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            return _error(request, 405)
        postpath = request.postpath
        if not postpath:
            name = ""
        elif len(postpath) == 1:
            name = postpath[0].decode("utf-8", "replace")
        else:
            return _error(request, 404)
        found = self._files.get(name)
        if found is None:
            return _error(request, 404)
        body, kind = found
        request.setHeader(b"Content-Type", kind)
        return body


class RootRedirect(Resource):
    """`GET /` → 302 to `/console`; any other path under the empty segment (`//x`) is
    404 as before."""

    isLeaf = True

    def render(self, request):
        secure_headers(request)
        if request.postpath:
            return _error(request, 404)
        if request.method not in (b"GET", b"HEAD"):
            return _error(request, 405)
        request.setResponseCode(302)
        request.setHeader(b"Location", PATH)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"See /console\n"


def mounted() -> dict:
    """What `build_site(mounted=...)` needs for the console: `/console` and `/`."""
    return {b"console": ConsoleResource(), b"": RootRedirect()}
