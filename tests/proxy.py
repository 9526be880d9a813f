"""A TCP proxy for fault tests, on Twisted's port forwarder: `swallowing` drops what the
upstream answers (replies lost on the way back) and `cut()` drops every connection through it."""

from __future__ import annotations

from twisted.protocols import portforward


class FaultyProxy:
    """Listens on a loopback port of its own and forwards to `host:port`."""

    def __init__(self, host: str, port: int):
        self.swallowing = False
        self.servers: list = []
        owner = self

        class Upstream(portforward.ProxyClient):
            def dataReceived(self, data):
                if not owner.swallowing:
                    super().dataReceived(data)

        class UpstreamFactory(portforward.ProxyClientFactory):
            protocol = Upstream

        class Downstream(portforward.ProxyServer):
            clientProtocolFactory = UpstreamFactory

            def connectionMade(self):
                owner.servers.append(self)
                super().connectionMade()

            def connectionLost(self, reason):
                if self in owner.servers:
                    owner.servers.remove(self)
                super().connectionLost(reason)

        self.factory = portforward.ProxyFactory(host, port)
        self.factory.protocol = Downstream
        self.factory.noisy = False
        self.listening = None

    def start(self, reactor) -> int:
        """Listen; the port."""
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        return self.listening.getHost().port

    def cut(self) -> None:
        """Drop every connection now (both sides), as a network fault would."""
        for server in list(self.servers):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()

    def stop(self):
        self.cut()
        return self.listening.stopListening() if self.listening is not None else None
