"""Client side of berth-shim's console protocol (see workers/shim/berth-shim.c).

Frames are ``u8 type, u32 length, payload``, integers big-endian. ``ShimConsole`` is the
asyncio client the host agent's relay uses (it implements ``ConsoleSession``); ``send_input``
is a one-shot synchronous writer for the driver itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from pathlib import Path

from workers.drivers.base import DriverError

HELLO, INPUT, RESIZE = b"h", b"i", b"r"
OUTPUT, GAP, EXIT = b"o", b"g", b"x"
MAX_INPUT_FRAME = 16384  # the shim drops clients that send larger frames
_HEADER = struct.Struct(">cI")


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def encode_input(data: bytes) -> bytes:
    return b"".join(encode(INPUT, data[i:i + MAX_INPUT_FRAME])
                    for i in range(0, len(data), MAX_INPUT_FRAME))


def send_input(path: Path, data: bytes, timeout: float = 1.0) -> None:
    """Type ``data`` on a console without attaching to its output."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(encode_input(data))


class ShimConsole:
    """An attached console. Output arrives numbered by byte offset since the container started.

    ``gaps`` lists (expected, resumed) offsets where output was lost because this reader fell
    more than the shim's scrollback behind (or asked for output older than the scrollback).
    ``exit_status`` is PID 1's wait status once the console has ended.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 from_offset: int) -> None:
        self._reader = reader
        self._writer = writer
        self.next_offset = from_offset
        self.gaps: list[tuple[int, int]] = []
        self.exit_status: int | None = None

    @classmethod
    async def connect(cls, path: Path | str, from_offset: int = 0) -> ShimConsole:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            raise DriverError(f"console {path} is not available: {exc.strerror}") from exc
        writer.write(encode(HELLO, struct.pack(">Q", from_offset)))
        await writer.drain()
        return cls(reader, writer, from_offset)

    async def read(self) -> tuple[int, bytes] | None:
        """Next (offset, data) chunk; None once the container has exited or the shim is gone."""
        while True:
            try:
                header = await self._reader.readexactly(_HEADER.size)
                kind, length = _HEADER.unpack(header)
                payload = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if kind == OUTPUT:
                (offset,) = struct.unpack_from(">Q", payload)
                self.next_offset = offset + length - 8
                return offset, payload[8:]
            if kind == GAP:
                (resumed,) = struct.unpack(">Q", payload)
                self.gaps.append((self.next_offset, resumed))
                self.next_offset = resumed
            elif kind == EXIT:
                (self.exit_status,) = struct.unpack(">i", payload)
                return None

    async def write(self, data: bytes) -> None:
        self._writer.write(encode_input(data))
        await self._writer.drain()

    async def resize(self, rows: int, cols: int) -> None:
        self._writer.write(encode(RESIZE, struct.pack(">HH", rows, cols)))
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
