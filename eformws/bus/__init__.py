"""The bus seam: every path into the system ends in `publish(message)`, and each process's
hub receives every published message through the callback given to `start`."""

from zope.interface import Interface


class IBus(Interface):
    def start(on_message):
        """Begin delivering published messages to `on_message(message) -> int`."""

    def publish(message):
        """Publish a `Message`; return a Deferred firing with the local recipient count
        when the transport knows it at once, else None."""

    def stop():
        """Stop delivering; may return a Deferred."""
