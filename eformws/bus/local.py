"""The single-process bus: a published message goes straight to this process's hub, in
the order it was published."""

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from eformws.bus import IBus


@implementer(IBus)
class LocalBus:
    healthy = None  # one process: nothing to reach, nothing to report
    write_error = None

    def __init__(self):
        self._on_message = None

    def start(self, on_message, on_signal=None):
        self._on_message = on_message

    def signal(self, payload, to=None):
        return None  # no other process to tell

    def publish(self, message):
        if self._on_message is None:
            return fail(RuntimeError("bus not started"))
        try:
            return succeed(self._on_message(message))
        except Exception:
            return fail()

    def stop(self):
        self._on_message = None

    def ping(self):
        return succeed(None)
