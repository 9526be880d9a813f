"""The listening socket, bound before the reactor runs (a port that cannot be had, in use,
not permitted or no such address, ends `twistd eformws` at once with one line and exit 1),
and the service that listens on it (or on host:port) through a Twisted endpoint."""

from __future__ import annotations

import errno
import os
import socket

from twisted.application.service import Service
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint


class CannotListen(Exception):
    """`eformws: cannot listen on HOST:PORT: <reason>`, for the one line on stderr."""


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port) and listening (SO_REUSEADDR, as
    Twisted's listenTCP); CannotListen with the reason in words when that fails."""
    listener = socket.socket(family_of(host), socket.SOCK_STREAM)
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


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def server_endpoint(reactor, host: str, port: int, backlog: int, inherited_fd: int | None = None):
    """Where the gateway listens: the socket bound before the reactor ran (`bind_listener`,
    by `twistd eformws` or by the worker parent, whose workers all accept on it), adopted
    and then closed; else (host, port)."""
    if inherited_fd is not None:
        return AdoptedStreamServerEndpoint(reactor, inherited_fd, family_of(host))
    tcp = TCP6ServerEndpoint if family_of(host) == socket.AF_INET6 else TCP4ServerEndpoint
    return tcp(reactor, port, backlog=backlog, interface=host)


class ListeningService(Service):
    """Listens on `endpoint` with `factory` while running; `listening` fires with the port
    (`port` is set then), and stopping stops listening (connections already made stay)."""

    def __init__(self, endpoint, factory):
        self.endpoint = endpoint
        self.factory = factory
        self.port = None
        self.listening = None

    def startService(self):
        super().startService()
        self.listening = self.endpoint.listen(self.factory)
        self.listening.addCallback(self._listened)

    def _listened(self, port):
        self.port = port
        return port

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        if self.listening is not None:
            self.listening.cancel()
        return None
