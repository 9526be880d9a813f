"""Sessions over time: every `sessions.recheck_interval` seconds, each connection whose
session has expired is closed with 1008 `Session expired`, and one whose session is no
longer in the store before its expiry (revoked, deleted) with 1008 `Session revoked`."""

from __future__ import annotations

import time

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, FirstError, gatherResults, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from eformws.core import metrics
from eformws.core.wire import CLOSE_POLICY
from eformws.sessions import lookup_again

log = Logger(namespace="eformws.expiry")

SESSION_EXPIRED = "Session expired"
SESSION_REVOKED = "Session revoked"


class SessionWatch(TimerService):
    """Asks the store once per distinct session per round (not once per connection), by its
    id or, for one found by the hash of its id (WAMP-CRA), by that hash.
    When the store cannot answer, only the expiry times known to each connection are
    applied that round: nobody is closed for an outage."""

    def __init__(self, hub, sessions, interval: float, clock=time.time):
        super().__init__(interval, self.check)
        self.hub = hub
        self.sessions = sessions
        self._clock = clock
        self._checking = False
        self._waiting: list[Deferred] = []  # asked for while a round was under way

    def check(self) -> Deferred:
        """One round now; fires with the number of connections it closed. Asked for while a
        round is under way (a revoke, say, after that round looked its session up), one more
        round follows it, for everyone who asked meanwhile, and this fires when it ends."""
        asked = Deferred()
        if self._checking:
            self._waiting.append(asked)
        else:
            self._rounds([asked])
        return asked

    @inlineCallbacks
    def _rounds(self, waiting: list[Deferred]):
        self._checking = True
        try:
            while waiting:
                try:
                    result = yield self._check()
                except Exception:
                    result = Failure()
                for asked in waiting:
                    if isinstance(result, Failure):
                        asked.errback(result)
                    else:
                        asked.callback(result)
                waiting, self._waiting = self._waiting, []
        finally:
            self._checking = False

    @inlineCallbacks
    def _check(self):
        now = self._clock()
        by_session: dict[str, list] = {}
        for connection in self.hub.connections():
            session = getattr(connection, "session", None)
            if session is not None:
                by_session.setdefault(session.id_hash, []).append(connection)
        ids = list(by_session)
        try:
            found = yield gatherResults([lookup_again(self.sessions, connections[0].session)
                                         for connections in by_session.values()], consumeErrors=True)
        except FirstError as e:
            log.warn("session recheck: the session store did not answer ({error}); expiry only this round",
                     error=type(e.subFailure.value).__name__)
            found = [connections[0].session for connections in by_session.values()]  # expiry still applies
        closed = 0
        for hashed, live in zip(ids, found):
            if live is not None and live.expires_at > now:
                continue
            for connection in by_session[hashed]:
                # Gone from the store before its time: revoked (or deleted), not expired.
                reason = SESSION_REVOKED if live is None and connection.session.expires_at > now else SESSION_EXPIRED
                connection.close(CLOSE_POLICY, reason)
                closed += 1
        metrics.session_expiry_closes.inc(closed)
        if closed:
            log.info("closed {count} connections whose session expired or was revoked", count=closed)
        return closed
