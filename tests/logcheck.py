"""A fixture for test modules that pin "no error in the log": import `logged_problems`
into the module and every test in it fails when a failure or error was logged."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher


@pytest.fixture(autouse=True)
def logged_problems():
    """Fails a test when a failure or an error was logged, or a warning by eformws.
    (Autobahn warns when it drops a connection whose handshake it refused: not ours.)"""
    problems = []

    def observe(event):
        level = event.get("log_level", LogLevel.info)
        ours = event.get("log_namespace", "").startswith("eformws")
        if event.get("log_failure") is not None or level >= LogLevel.error or (ours and level >= LogLevel.warn):
            problems.append(event)

    globalLogPublisher.addObserver(observe)
    yield problems
    globalLogPublisher.removeObserver(observe)
    assert problems == [], [event.get("log_format") for event in problems]


class LogCapture:
    """Every event on Twisted's global log publisher (where Autobahn's txaio logs go) while
    active, formatted as text."""

    def __init__(self):
        self.events = []

    def __enter__(self):
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.events.append)

    def texts(self) -> list[str]:
        texts = []
        for event in self.events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            texts.append(text)
        return texts
