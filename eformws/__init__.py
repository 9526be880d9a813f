"""eformws: the real-time gateway of the eform locker system (WebSocket, WAMP, HTTP).
See docs/ for the protocol as built and how to run it."""

__version__ = "0.1.0"
