"""A raw WebSocket client (asyncio streams, no library) for what the server does with a
client that stops reading: it completes the handshake, then reads only when asked (the
tests and `bench/hostile.py`)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections import Counter


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final frame of `opcode`, as a client sends it."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class StalledClient:
    """A raw WebSocket client that completes the handshake and then never reads again,
    with a small receive buffer so the server's own buffer is what fills up."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str, protocol: str | None = None, before_stalling=None) -> "StalledClient":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "") + "\r\n"
        ).encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        if before_stalling is not None:
            await before_stalling(client)
        reader._transport.pause_reading()  # from here on nothing is read
        return client

    async def send_text(self, text: str) -> None:
        """One masked text frame, as a client sends it."""
        self.writer.write(client_frame(0x1, text.encode()))
        await self.writer.drain()

    async def send_ping(self, payload: bytes = b"") -> None:
        """One control ping."""
        self.writer.write(client_frame(0x9, payload))
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The next frame the server sent (unmasked, unfragmented): (opcode, payload)."""
        first = await self.reader.readexactly(2)
        length = first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first[0] & 0x0F, await self.reader.readexactly(length)

    async def read_text(self) -> str:
        """The next text frame's payload."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x1:
                return payload.decode()

    async def until_close(self) -> tuple[Counter, int, str]:
        """Read what the server sent, up to its close frame: (how many frames of each opcode
        came before it, the close code, the reason)."""
        self.reader._transport.resume_reading()
        counts: Counter = Counter()
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return counts, int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")
            counts[opcode] += 1

    async def close_code(self) -> int:
        """Read what the server sent, up to its close frame: the close code."""
        return (await self.until_close())[1]
