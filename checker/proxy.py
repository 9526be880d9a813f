"""The checker's TCP proxies (asyncio): `DelayProxy` delays what comes back from a gateway's Redis;
`RandomProxy` sends each connection to a random live gateway and can cut one (both sides aborted)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

CHUNK = 65536
CONNECT_TIMEOUT = 2.0


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass


class _Proxy:
    """Accepts on a loopback port; `_upstream()` says where a new connection goes; each
    connection is a pair of copies, both sides closed as soon as either ends."""

    def __init__(self):
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.accepted = 0
        self.refused = 0  # no upstream could be reached for a new connection
        self._tasks: set[asyncio.Task] = set()

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def _upstream(self) -> int | None:
        raise NotImplementedError

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _copy(reader, writer)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            await self._serve(client_reader, client_writer)
        except asyncio.CancelledError:
            _abort(client_writer)  # the proxy is closing: end quietly (asyncio's stream callback
            # would report a cancelled handler as an error)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        port = self._upstream()
        try:
            if port is None:
                raise ConnectionRefusedError("no live upstream")
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self.refused += 1
            _abort(client_writer)
            return
        pair = (client_writer, up_writer)
        self.pairs.add(pair)
        forward = asyncio.ensure_future(_copy(client_reader, up_writer))
        back = asyncio.ensure_future(self._downstream(up_reader, client_writer))
        try:
            await asyncio.wait({forward, back}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (forward, back):
                task.cancel()
            await asyncio.gather(forward, back, return_exceptions=True)
            self.pairs.discard(pair)
            for writer in pair:
                try:
                    writer.close()
                except Exception:
                    pass

    def cut_all(self) -> int:
        pairs = list(self.pairs)
        for pair in pairs:
            for writer in pair:
                _abort(writer)
        return len(pairs)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass


class DelayProxy(_Proxy):
    """Bytes from the upstream reach the client `delay` seconds after they arrived (in order:
    lowering the delay never lets later bytes overtake earlier ones)."""

    def __init__(self, upstream_port: int):
        super().__init__()
        self.upstream_port = upstream_port
        self.delay = 0.0

    def _upstream(self) -> int | None:
        return self.upstream_port

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        last = 0.0
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                last = max(loop.time() + self.delay, last)
                queue.put_nowait((last, data))
            queue.put_nowait((last, None))
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


class RandomProxy(_Proxy):
    """Each connection goes to a port `live()` lists, chosen at random; `cut()` aborts both
    sides of one random connection (the client sees it dropped: 1006)."""

    def __init__(self, live: Callable[[], list[int]], rng: random.Random):
        super().__init__()
        self.live = live
        self.rng = rng
        self.cuts = 0
        self.routed: dict[int, int] = {}  # port -> connections sent there

    def _upstream(self) -> int | None:
        ports = self.live()
        if not ports:
            return None
        port = self.rng.choice(ports)
        self.routed[port] = self.routed.get(port, 0) + 1
        return port

    def cut(self) -> bool:
        if not self.pairs:
            return False
        pair = self.rng.choice(list(self.pairs))
        for writer in pair:
            _abort(writer)
        self.cuts += 1
        return True
