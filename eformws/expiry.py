"""Sessions over time: every `sessions.recheck_interval` seconds, each connection whose
session has expired or is no longer in the store (revoked) is closed with 1008."""

from __future__ import annotations

import time

from twisted.application.internet import TimerService
from twisted.internet.defer import FirstError, gatherResults, inlineCallbacks
from twisted.logger import Logger

from eformws import metrics

log = Logger(namespace="eformws.expiry")

CLOSE_POLICY = 1008
SESSION_EXPIRED = "Session expired"


class SessionWatch(TimerService):
    """Asks the store once per distinct session id per round (not once per connection).
    When the store cannot answer, only the expiry times known to each connection are
    applied that round: nobody is closed for an outage."""

    def __init__(self, hub, sessions, interval: float, clock=time.time):
        super().__init__(interval, self.check)
        self.hub = hub
        self.sessions = sessions
        self._clock = clock
        self._checking = False

    @inlineCallbacks
    def check(self):
        if self._checking:
            return 0
        self._checking = True
        try:
            return (yield self._check())
        finally:
            self._checking = False

    @inlineCallbacks
    def _check(self):
        now = self._clock()
        by_session: dict[str, list] = {}
        for connection in self.hub.connections():
            session = getattr(connection, "session", None)
            if session is not None:
                by_session.setdefault(session.id, []).append(connection)
        ids = list(by_session)
        try:
            found = yield gatherResults([self.sessions.lookup(session_id) for session_id in ids], consumeErrors=True)
        except FirstError as e:
            log.warn("session recheck: the session store did not answer ({error}); expiry only this round",
                     error=type(e.subFailure.value).__name__)
            found = [connections[0].session for connections in by_session.values()]  # expiry still applies
        closed = 0
        for session_id, live in zip(ids, found):
            if live is not None and live.expires_at > now:
                continue
            for connection in by_session[session_id]:
                connection.close(CLOSE_POLICY, SESSION_EXPIRED)
                closed += 1
        metrics.session_expiry_closes.inc(closed)
        if closed:
            log.info("closed {count} connections whose session expired or was revoked", count=closed)
        return closed
