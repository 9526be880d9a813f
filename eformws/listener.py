"""The listening socket, bound before the reactor runs: a port that cannot be had (in use,
not permitted, no such address) ends `twistd eformws` at once with one line and exit 1."""

from __future__ import annotations

import errno
import os
import socket


class CannotListen(Exception):
    """`eformws: cannot listen on HOST:PORT: <reason>`, for the one line on stderr."""


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port) and listening (SO_REUSEADDR, as
    Twisted's listenTCP); CannotListen with the reason in words when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError as e:
        listener.close()
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        if e.errno == errno.EADDRINUSE:
            reason = "address already in use (another process listens there: stop it, or choose --port)"
        elif isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            reason = f"no such address on this machine ({e.strerror or e})"
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
    listener.setblocking(False)
    return listener
