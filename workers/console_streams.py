"""Where consoles meet Redis, shared by the host agent (writer) and the web consumers (readers).

Output of each instance's console is a Redis stream, ``berth:console:<uuid>``: entries carry
the bytes (``d``), their offset in the current boot (``o``) and a boot id (``b``). The stream is
trimmed to a bounded size, so it is also the scrollback a new viewer gets first. Input and
resize requests go the other way on one pub/sub channel per host.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

UUID_LEN = 32


def output_stream(uuid: str) -> str:
    return f"berth:console:{uuid}"


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
