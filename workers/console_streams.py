"""Where consoles meet Redis, shared by the host agent (writer) and the web consumers (readers).

Output of each instance's console is a Redis stream, ``berth:host:<host>:console:<uuid>``
(under the host's own key prefix, so a host's Redis user can write its own consoles and read
no other host's): entries carry
the bytes (``d``), their offset in the current boot (``o``) and a boot id (``b``). The stream is
trimmed to a bounded size, so it is also the scrollback a new viewer gets first. (boot, offset)
names every byte for good, whatever happens to the stream: the agent resumes from it after a
restart, a viewer's browser resumes from it after a reconnect (``ResumePoint``), and readers
use it to drop bytes relayed twice and to notice bytes that were trimmed before they read them.
Input and resize requests go the other way on one pub/sub channel per host.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from workers.config import host_key_prefix

UUID_LEN = 32


@dataclass(frozen=True)
class OutputEntry:
    boot: str
    offset: int
    data: bytes

    def fields(self) -> dict[str, bytes | int | str]:
        return {"d": self.data, "o": self.offset, "b": self.boot}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> OutputEntry:
        """Parse a stream entry; raises ValueError when it is malformed."""
        try:
            return cls(fields[b"b"].decode(), int(fields[b"o"]), fields[b"d"])
        except (KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed console entry: {exc}") from exc


@dataclass(frozen=True)
class ResumePoint:
    """The next byte a viewer needs: ``<boot>:<offset>`` on the wire."""

    boot: str
    offset: int

    def __str__(self) -> str:
        return f"{self.boot}:{self.offset}"

    @classmethod
    def parse(cls, value: str) -> ResumePoint:
        boot, sep, offset = value.rpartition(":")
        if not sep or not boot or len(value) > 100 or not offset.isdigit():
            raise ValueError(f"not a resume point: {value!r}")
        return cls(boot, int(offset))


def output_stream(host_name: str, uuid: str) -> str:
    return f"{host_key_prefix(host_name)}console:{uuid}"


def input_channel(host_name: str) -> str:
    return f"berth:console-in:{host_name}"


def agent_channel(host_name: str) -> str:
    """Commands for a host's agent (attach a console now, ...)."""
    return f"berth:agent:{host_name}"


@dataclass(frozen=True)
class ConsoleInput:
    kind: str  # "i" input bytes, "r" resize
    uuid: str
    data: bytes = b""
    rows: int = 0
    cols: int = 0


def encode_input(uuid: str, data: bytes) -> bytes:
    return b"i" + uuid.encode("ascii") + data


def encode_resize(uuid: str, rows: int, cols: int) -> bytes:
    return b"r" + uuid.encode("ascii") + struct.pack(">HH", rows, cols)


def decode(message: bytes) -> ConsoleInput:
    """Parse one message of an input channel; raises ValueError when it is malformed."""
    if len(message) < 1 + UUID_LEN:
        raise ValueError("console message too short")
    kind = chr(message[0])
    uuid = message[1 : 1 + UUID_LEN].decode("ascii")
    payload = message[1 + UUID_LEN :]
    if kind == "i":
        return ConsoleInput("i", uuid, data=payload)
    if kind == "r" and len(payload) == 4:
        rows, cols = struct.unpack(">HH", payload)
        return ConsoleInput("r", uuid, rows=rows, cols=cols)
    raise ValueError(f"unknown console message {kind!r}")
