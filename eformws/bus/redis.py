"""The bus between processes: messages are JSON entries of one capped Redis Stream that
every process reads from where it left off, so an outage loses nothing within the caps."""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from itertools import islice

import cbor2
from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from eformws.backends.redis import (
    Script,
    WritePause,
    command_connection,
    reading_connection,
    retry_delay,
    retryable_reply,
)
from eformws.bus import IBus
from eformws.core.message import Message

log = Logger(namespace="eformws.bus.redis")

READ_BATCH = 1000
WRITE_BATCH = 500

# KEYS: the stream. ARGV: its length cap, then the entries, each added in order.
PUBLISH = Script(
    "#!lua\n"
    "for i = 2, #ARGV do redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[i]) end\n"
    "return #ARGV - 1\n"
)


@implementer(IBus)
class RedisBus(MultiService):
    """Local recipients get a message at once, from `publish`; the other processes get it
    from the stream. Each entry names its producer (`node`, `n`), so a process skips its
    own entries and any entry it has already delivered (a retried write), and one
    producer's messages are delivered everywhere in the order it published them.

    While Redis is unreachable, entries wait in a bounded buffer (oldest dropped past
    `buffer_size`, with a warning) and are written, in order, once it is back.

    `redis` is the process's connection for writes (the bus writes on it), or an address
    to open one of its own; reads are on a connection of its own (a blocking XREAD)."""

    def __init__(self, redis, prefix: str, node_id: str, buffer_size: int, stream_length: int,
                 initial_delay: float = 0.5, max_delay: float = 10.0, block_ms: int = 5000):
        super().__init__()
        self.key = f"{prefix}bus"
        self.node_id = node_id
        self.buffer_size = buffer_size
        self.stream_length = stream_length
        self.block_ms = block_ms
        self._backoff = (initial_delay, max_delay)
        self.pause = WritePause("bus writes", self._flush, initial_delay, max_delay)
        self._read_retry = None  # the delayed call that reads again after an error reply
        self._read_failures = 0
        self.writer = command_connection(self, redis, "bus writer", initial_delay, max_delay)
        self.reader = reading_connection(self, redis, "bus reader", initial_delay, max_delay, block_ms)
        self.writer.on_connected.append(lambda _: self._flush())
        self.reader.on_connected.append(lambda _: self._start_reading())
        self.pending: deque[str] = deque()
        self._signal_entries: set[int] = set()  # ids of the entries in `pending` that are signals
        self.dropped = 0
        self._n = 0
        self._flushing = False
        self._writing: list[str] = []  # the batch being written: the first entries of `pending`
        self._reading = False
        self._last_id: str | None = None
        self._seen: dict[str, int] = {}
        self._on_message = None
        self._on_signal = None
        self._started_at = time.time()

    # -- IBus ----------------------------------------------------------------------

    def start(self, on_message, on_signal=None):
        self._on_message = on_message
        self._on_signal = on_signal
        self._started_at = time.time()

    def stop(self):
        self._on_message = None
        self._on_signal = None

    def publish(self, message: Message):
        count = self._on_message(message) if self._on_message else 0
        if message.opaque:  # a client's payload, exactly: CBOR keeps bytes and keys that are not strings
            self._send({"cbor": _cbor(message.to_json())})
        else:
            self._send({"message": message.to_json()})
        return succeed(count)

    def signal(self, payload: dict, to: str | None = None):
        try:
            body = {"signal": _cbor(payload)}
        except Exception as e:  # cbor2's own errors, deep nesting: refused before anything is queued
            raise ValueError(f"the bus cannot carry this signal: {str(e)[:200]}") from None
        if to is not None:
            body["to"] = to
        self._send(body)

    def _send(self, body: dict) -> None:
        """Queue one entry (numbered: readers skip what they have had) and write."""
        self._n += 1
        entry = json.dumps({"node": self.node_id, "n": self._n, **body}, separators=(",", ":"))
        if len(self.pending) >= self.buffer_size:
            self._drop_oldest()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warn("redis outage buffer full: {dropped} messages dropped for other processes", dropped=self.dropped)
        self.pending.append(entry)
        if "signal" in body:
            self._signal_entries.add(id(entry))
        self._flush()

    def ping(self):
        """PING on the writer: a connection that looks up but whose Redis hangs answers
        nothing, which `healthy` alone cannot tell."""
        return self.writer.command("PING")

    @property
    def write_error(self) -> str | None:
        """Why Redis refuses bus writes now (out of memory, ...), or None."""
        return self.pause.error

    @property
    def healthy(self) -> bool:
        """Both connections up and writes taken: messages reach every process now."""
        return self.writer.connected and self.reader.connected and self.write_error is None

    def stopService(self):
        self.pause.cancel()
        if self._read_retry is not None and self._read_retry.active():
            self._read_retry.cancel()
        self._read_retry = None
        return super().stopService()

    # -- writing ---------------------------------------------------------------------

    @inlineCallbacks
    def _flush(self):
        """Write what waits, a batch at a time, each batch in one script (all of it or
        none: a refused batch leaves no hole that a retry would fill out of order)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self.pending and self.writer.connected and not self.pause.paused:
                batch = self._writing = list(islice(self.pending, WRITE_BATCH))
                try:
                    yield PUBLISH.run(self.writer, [self.key], [self.stream_length, *batch])
                except Exception as e:
                    self._writing = []
                    if retryable_reply(e):
                        self.pause.refused(e)  # retried on its own, not on the next publish
                    elif self.write_error is None:
                        # Lost with the connection: written again once it is back.
                        log.warn("redis bus write failed ({error}); {n} messages kept for retry",
                                 error=type(e).__name__, n=len(self.pending))
                    return
                self.pause.accepted()
                for _ in range(self._written_still_pending()):
                    self._signal_entries.discard(id(self.pending.popleft()))
                self._writing = []
        finally:
            self._flushing = False

    def _written_still_pending(self) -> int:
        """How many of the batch being written are still first in `pending` (a full buffer
        may have dropped some of them meanwhile)."""
        writing = {id(entry) for entry in self._writing}
        count = 0
        for entry in self.pending:
            if id(entry) not in writing:
                break
            count += 1
        return count

    def _drop_oldest(self) -> None:
        """Make room in a full buffer: drop the oldest broadcast that is not being written
        (signals go last: a call waits for each of its own), else the oldest signal that is
        not, or, when all are being written, the oldest (the write under way may still
        deliver it)."""
        being_written = self._written_still_pending()
        index = next((i for i in range(being_written, len(self.pending))
                      if id(self.pending[i]) not in self._signal_entries), None)
        if index is None:
            index = being_written if being_written < len(self.pending) else 0
        self._signal_entries.discard(id(self.pending[index]))
        del self.pending[index]

    @staticmethod
    def _reactor():
        from twisted.internet import reactor

        return reactor

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
                self._read_failures = 0
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        self._last_id = entry_id
                        self._receive(fields)
        except Exception as e:
            if self.running and self.reader.connected:
                # An error reply on a live connection (LOADING while a restarted Redis loads
                # its data, BUSY, ...): no reconnect will come to restart the loop; retry it.
                self._read_failures += 1
                delay = retry_delay(self._read_failures, *self._backoff)
                if self._read_failures == 1:
                    log.warn("redis bus read refused ({error}); reading again in {delay:.1f} s",
                             error=str(e).split("\r")[0][:200], delay=delay)
                self._read_retry = self._reactor().callLater(delay, self._read_again)
            elif self.running:
                log.warn("redis bus read stopped ({error}); resumes on reconnect", error=type(e).__name__)
        finally:
            self._reading = False

    def _read_again(self) -> None:
        self._read_retry = None
        self._start_reading()

    def _receive(self, fields) -> None:
        try:
            value = json.loads(dict(zip(fields[::2], fields[1::2]))["m"])
            node, n = value["node"], value["n"]
            if node == self.node_id or n <= self._seen.get(node, 0):
                return
            self._seen[node] = n
            signal = None
            if "signal" in value:
                if value.get("to", self.node_id) != self.node_id:
                    return  # for another process
                signal = dict(cbor2.loads(base64.b64decode(value["signal"])), **{"from": node})
            elif "cbor" in value:
                message = Message.from_json(cbor2.loads(base64.b64decode(value["cbor"])))
            else:
                message = Message.from_json(value["message"])
        except Exception:  # anything an entry can be made to raise (cbor2's own errors, deep nesting, ...)
            log.warn("ignored a malformed entry on the redis bus")
            return
        if signal is not None:
            if self._on_signal is not None:
                self._on_signal(signal)
        elif self._on_message is not None:
            self._on_message(message)


def _cbor(value) -> str:
    """`value` in CBOR, as base64 text for a JSON entry."""
    return base64.b64encode(cbor2.dumps(value)).decode("ascii")
