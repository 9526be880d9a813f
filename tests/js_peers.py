"""Autobahn|JS peers in Node (tests/js/): the node command, a child's output as lines, and the
mark for tests that need them (skipped only where there is no Node at all; under
scripts/test, which runs `npm ci` when Node is there, a missing Autobahn|JS is a failure)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import ProcessProtocol

JS_DIR = Path(__file__).parent / "js"


def node_command() -> list[str] | None:
    """`node` with what Autobahn|JS needs (a global WebSocket: a flag before Node 22), or
    None when node or the autobahn package is missing."""
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "autobahn").is_dir():
        return None
    major = int(subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip("v\n").split(".")[0])
    return [node] if major >= 22 else [node, "--experimental-websocket"]


class Lines(ProcessProtocol):
    """A child process's stdout as a queue of lines; `ended` fires with its exit code."""

    def __init__(self):
        self.lines = DeferredQueue()
        self.ended = Deferred()
        self.stderr = b""
        self._buffer = b""

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.lines.put(line.decode("utf-8"))

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)



NODE = node_command()

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or (NODE is None and not os.environ.get("EFORMWS_TEST_REQUIRE_ALL")),
    reason="needs node and `npm install --prefix tests/js`",
)
