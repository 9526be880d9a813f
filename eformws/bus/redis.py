"""The bus between processes: messages are JSON entries of one capped Redis Stream that
every process reads from where it left off, so an outage loses nothing within the caps."""

from __future__ import annotations

import json
import time
from collections import deque

from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from eformws.bus import IBus
from eformws.message import Message
from eformws.redis import RedisConnection

log = Logger(namespace="eformws.bus.redis")

READ_BATCH = 1000
WRITE_BATCH = 500


@implementer(IBus)
class RedisBus(MultiService):
    """Local recipients get a message at once, from `publish`; the other processes get it
    from the stream. Each entry names its producer (`node`, `n`), so a process skips its
    own entries and any entry it has already delivered (a retried write), and one
    producer's messages are delivered everywhere in the order it published them.

    While Redis is unreachable, entries wait in a bounded buffer (oldest dropped past
    `buffer_size`, with a warning) and are written, in order, once it is back."""

    def __init__(self, address, prefix: str, node_id: str, buffer_size: int, stream_length: int,
                 initial_delay: float = 0.5, max_delay: float = 10.0, block_ms: int = 5000):
        super().__init__()
        self.key = f"{prefix}bus"
        self.node_id = node_id
        self.buffer_size = buffer_size
        self.stream_length = stream_length
        self.block_ms = block_ms
        self.writer = RedisConnection(address, "bus writer", initial_delay, max_delay)
        self.reader = RedisConnection(address, "bus reader", initial_delay, max_delay, reply_timeout=None)
        self.writer.setServiceParent(self)
        self.reader.setServiceParent(self)
        self.writer.on_connected.append(lambda _: self._flush())
        self.reader.on_connected.append(lambda _: self._start_reading())
        self.pending: deque[str] = deque()
        self.dropped = 0
        self._n = 0
        self._flushing = False
        self._reading = False
        self._last_id: str | None = None
        self._seen: dict[str, int] = {}
        self._on_message = None
        self._started_at = time.time()

    # -- IBus ----------------------------------------------------------------------

    def start(self, on_message):
        self._on_message = on_message
        self._started_at = time.time()

    def stop(self):
        self._on_message = None

    def publish(self, message: Message):
        count = self._on_message(message) if self._on_message else 0
        self._n += 1
        entry = json.dumps({"node": self.node_id, "n": self._n, "message": message.to_json()}, separators=(",", ":"))
        if len(self.pending) >= self.buffer_size:
            self.pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warn("redis outage buffer full: {dropped} messages dropped for other processes", dropped=self.dropped)
        self.pending.append(entry)
        self._flush()
        return succeed(count)

    @property
    def healthy(self) -> bool:
        return self.writer.connected and self.reader.connected

    # -- writing ---------------------------------------------------------------------

    @inlineCallbacks
    def _flush(self):
        if self._flushing:
            return
        self._flushing = True
        try:
            while self.pending and self.writer.connected:
                batch = list(self.pending)[:WRITE_BATCH]
                writes = [
                    self.writer.command("XADD", self.key, "MAXLEN", "~", self.stream_length, "*", "m", entry)
                    for entry in batch
                ]
                try:
                    for write in writes:
                        yield write
                except Exception as e:
                    log.warn("redis bus write failed ({error}); {n} messages kept for retry",
                             error=type(e).__name__, n=len(self.pending))
                    for write in writes:
                        write.addErrback(lambda _: None)
                    return
                for _ in batch:
                    self.pending.popleft()
        finally:
            self._flushing = False

    # -- reading ---------------------------------------------------------------------

    @inlineCallbacks
    def _start_reading(self):
        if self._reading:
            return
        self._reading = True
        try:
            if self._last_id is None:
                # Read what was published since this process started: its clients cannot be
                # older, and they may have connected before Redis was reachable. Stream ids
                # are Redis's clock, so translate our start time to it.
                seconds, micros = yield self.reader.command("TIME")
                offset = int(seconds) + int(micros) / 1e6 - time.time()
                self._last_id = f"{max(0, int((self._started_at + offset) * 1000))}-0"
                log.info("redis bus reading {key}", key=self.key)
            while self.running and self.reader.connected:
                reply = yield self.reader.command(
                    "XREAD", "BLOCK", self.block_ms, "COUNT", READ_BATCH, "STREAMS", self.key, self._last_id
                )
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        self._last_id = entry_id
                        self._receive(fields)
        except Exception as e:
            if self.running:
                log.warn("redis bus read stopped ({error}); resumes on reconnect", error=type(e).__name__)
        finally:
            self._reading = False

    def _receive(self, fields) -> None:
        try:
            value = json.loads(dict(zip(fields[::2], fields[1::2]))["m"])
            node, n = value["node"], value["n"]
            if node == self.node_id or n <= self._seen.get(node, 0):
                return
            self._seen[node] = n
            message = Message.from_json(value["message"])
        except (KeyError, TypeError, ValueError):
            log.warn("ignored a malformed entry on the redis bus")
            return
        if self._on_message is not None:
            self._on_message(message)
