"""The way out of the event log: `EventFeed` follows the store and hands every event, in
seq order, to this process's hub, which then knows how far it has delivered (`position`)."""

from __future__ import annotations

from twisted.logger import Logger

from eformws import events
from eformws.core.message import Message
from eformws.core.wire import CLOSE_SERVICE_RESTART
from eformws.events.store import Position, parse_cursor

log = Logger(namespace="eformws.feed")

LOG_INTERRUPTED = "Event stream interrupted; reconnect and resume"


class EventFeed:
    """Delivery of structured events comes from the log only, the producing process
    included, so every process delivers them in the one order of their seqs."""

    def __init__(self, hub, store):
        self.hub = hub
        self.store = store

    def start(self):
        """Follow the log; fires with the position it had (None if the store cannot say)."""
        d = self.store.follow(self._deliver, self._reset)

        def known(position):
            if position is not None and self.hub.position is None:
                self.hub.position = position
            return position

        def unknown(failure):
            log.warn("the event log's position is not known yet ({error})", error=failure.getErrorMessage())

        d.addCallbacks(known, unknown)
        return d

    def _deliver(self, envelope: dict, created: float) -> None:
        position = self.hub.position = Position(envelope["epoch"], parse_cursor(envelope["seq"]))
        self.hub.deliver(Message(envelope, events.targets_of(envelope), created, position=position))

    def _reset(self, position: Position, why: str) -> None:
        """The log was replaced or events were lost before this process read them: every
        client here may have missed some, so each is closed to resume (and be told)."""
        self.hub.position = position
        self.hub.close_all(CLOSE_SERVICE_RESTART, LOG_INTERRUPTED)
