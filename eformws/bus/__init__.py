"""The bus seam: every path into the system ends in `publish(message)`, and each process's
hub receives every published message through the callback given to `start`; `signal`
carries the router's own traffic between processes; /healthz reads `healthy`, `write_error`."""

from zope.interface import Attribute, Interface


class IBus(Interface):
    healthy = Attribute(
        "True while published messages reach every process, False while they reach this "
        "process's clients only and wait for the others (the transport is unreachable or "
        "refuses writes); None for a bus of one process, which has no other to reach "
        "(/healthz then has no `redis_bus` check)."
    )
    write_error = Attribute(
        "Why the transport refuses writes now (e.g. Redis out of memory), one line, else "
        "None (also while it is only unreachable); /healthz tells it."
    )

    def start(on_message, on_signal=None):
        """Begin delivering published messages to `on_message(message) -> int`, and other
        processes' signals to `on_signal(payload)` (payload gains `from`: the sender)."""

    def signal(payload, to=None):
        """Send a dict (anything CBOR carries; ValueError when it cannot) to the
        process `to` (a node id), or to every other process; in the order signals and
        messages were sent. A bus of one process has no other: nothing is sent."""

    def publish(message):
        """Publish a `Message`; return a Deferred firing with the local recipient count
        when the transport knows it at once, else None."""

    def stop():
        """Stop delivering; may return a Deferred."""

    def ping():
        """A Deferred firing once the transport answers (Redis: PING on the writer), at
        once for a bus of one process; /healthz bounds the wait."""
