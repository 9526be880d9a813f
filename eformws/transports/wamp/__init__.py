"""The WAMP v2 router on `/wamp` (realm `eform`): sessions and auth, a broker over the hub's
deliveries with the legacy topic map, and a dealer for the router's own `eform.*` procedures."""

import txaio

# Autobahn's serializers bind txaio's clock when imported: choose the framework first.
txaio.use_twisted()

from eformws.transports.wamp.router import WampRouter  # noqa: E402  (after txaio's framework is chosen)

__all__ = ["WampRouter"]
