"""Deferred helpers Twisted does not have: `shielded(d)`, a Deferred that follows `d` and
whose cancellation (a caller giving up) leaves `d` and what it does alone."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def shielded(d: Deferred) -> Deferred:
    """A new Deferred firing with `d`'s result; cancelling it does not cancel `d`."""
    out = Deferred()

    def relay(result):
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)

    d.addBoth(relay)
    return out
