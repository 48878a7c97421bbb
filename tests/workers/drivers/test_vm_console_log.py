"""SerialLog: byte offsets that stay stable across virtlogd's log rotation."""

from __future__ import annotations

import os
from pathlib import Path

from workers.drivers.vm.console import SerialLog


def _read_all(log: SerialLog, offset: int) -> tuple[int, bytes]:
    out = b""
    start = None
    while True:
        at, data = log.read(offset)
        if not data:
            return (start if start is not None else offset), out
        start = at if start is None else start
        out += data
        offset = at + len(data)


def test_offsets_follow_rotation_seen_and_unseen(tmp_path: Path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"first boot\n")
    log = SerialLog(path)
    assert _read_all(log, 0) == (0, b"first boot\n")
    assert _read_all(log, 6) == (6, b"boot\n")

    os.replace(path, path.with_name("serial.log.0"))  # virtlogd rotates while we watch
    path.write_bytes(b"after rotation\n")
    assert _read_all(log, 11) == (11, b"after rotation\n")
    log.close()

    again = SerialLog(path)  # a later session numbers the same bytes the same way
    again.open()
    assert again.base == 11 and again.end == 26
    again.close()

    os.replace(path, path.with_name("serial.log.0"))  # rotated while nobody watched
    path.write_bytes(b"x\n")
    late = SerialLog(path)
    assert _read_all(late, 0) == (26, b"x\n")  # what is gone is skipped, not renumbered
    late.close()


def test_missing_log_reads_nothing(tmp_path: Path):
    log = SerialLog(tmp_path / "serial.log")
    assert log.read(0) == (0, b"") and log.end == 0
