"""Stock Autobahn|Python WAMP sessions on a test server's /wamp (ticket, WAMP-CRA or cookie
auth, JSON, MessagePack or CBOR): for every test module that talks WAMP as a real client would
(over RawSocket: rawsocket_peer.py)."""

from __future__ import annotations

from autobahn.twisted.wamp import ApplicationSession
from autobahn.wamp import auth
from autobahn.twisted.websocket import WampWebSocketClientFactory, connectWS
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import ComponentConfig, SubscribeOptions
from twisted.internet.defer import Deferred, DeferredQueue

from conftest import within

REALM = "eform"
SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgPackSerializer, "cbor": CBORSerializer}


class Peer(ApplicationSession):
    """A stock Autobahn session: joins with the given methods (and `authid`), answers a
    ticket challenge with `ticket` and a WAMP-CRA one with `compute_wcs` of `secret`, and
    reports join, leave and disconnect as Deferreds."""

    def __init__(self, realm=REALM, authmethods=None, ticket=None, authid=None, secret=None):
        super().__init__(ComponentConfig(realm))
        self.authmethods = authmethods
        self.ticket = ticket
        self.hello_authid = authid
        self.secret = secret
        self.joined = Deferred()
        self.left = Deferred()
        self.gone = Deferred()
        self.challenges = []

    def onConnect(self):
        self.join(self.config.realm, authmethods=self.authmethods, authid=self.hello_authid)

    def onChallenge(self, challenge):
        self.challenges.append(challenge.method)
        if challenge.method == "wampcra":
            self.cra_challenge = challenge.extra["challenge"]
            return auth.compute_wcs(self.secret, challenge.extra["challenge"]).decode("ascii")
        return self.ticket

    def onJoin(self, details):
        self.joined.callback(details)

    def onLeave(self, details):
        if not self.left.called:
            self.left.callback(details)
        self.disconnect()

    def onDisconnect(self):
        if not self.gone.called:
            self.gone.callback(None)


class Inbox:
    """A subscription handler that queues what it gets: (args, kwargs, details)."""

    def __init__(self):
        self._queue = DeferredQueue()

    def __call__(self, *args, details=None, **kwargs):
        self._queue.put((args, kwargs, details))

    async def next(self):
        """An eform EVENT: (envelope, details)."""
        args, kwargs, details = await within(self._queue.get())
        assert len(args) == 1 and not kwargs, (args, kwargs)
        return args[0], details

    async def next_publication(self):
        """An application's EVENT: (args, kwargs, details) as the publisher gave them."""
        return await within(self._queue.get())

    @property
    def empty(self) -> bool:
        return not self._queue.pending


def new_peer(*, ticket=None, realm=REALM, authmethods=None, authid=None, secret=None) -> Peer:
    """A Peer: ticket auth when `ticket` is given, WAMP-CRA when `secret` is (with `authid`)."""
    if authmethods is None:
        authmethods = ["ticket"] if ticket is not None else ["wampcra"] if secret is not None else None
    return Peer(realm, authmethods, ticket, authid, secret)


def open_peer(server, serializer="json", *, ticket=None, cookie=None, realm=REALM, authmethods=None, authid=None,
              secret=None) -> Peer:
    """Connect a Peer (`new_peer`) over `serializer`; a session cookie on the upgrade when
    `cookie` is given."""
    peer = new_peer(ticket=ticket, realm=realm, authmethods=authmethods, authid=authid, secret=secret)
    headers = {"Cookie": f"sessionId={cookie}"} if cookie is not None else None
    factory = WampWebSocketClientFactory(
        lambda: peer, url=server.url("/wamp"), serializers=[SERIALIZERS[serializer]()], headers=headers
    )
    connectWS(factory)
    return peer


async def join(server, serializer="json", role="admin", kiosk=None, user="alice"):
    """A joined Peer (ticket auth) of a new session with `role`."""
    sid = await server.session(user=user, role=role, kiosk=kiosk)
    peer = open_peer(server, serializer, ticket=sid)
    await within(peer.joined)
    return peer


async def subscribe(peer, topic, match=None, get_retained=None):
    inbox = Inbox()
    options = SubscribeOptions(match=match, details_arg="details", get_retained=get_retained)
    subscription = await within(peer.subscribe(inbox, topic, options=options))
    return inbox, subscription


async def call_error(d) -> ApplicationError:
    """The ApplicationError a call or acknowledged publish fails with."""
    try:
        await within(d)
    except ApplicationError as e:
        return e
    raise AssertionError("expected an ERROR")
