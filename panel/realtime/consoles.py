"""What a console viewer receives: the scrollback, then the live output, as WebSocket frames.

Bytes go out as they are (binary frames, never decoded: a UTF-8 character or an escape
sequence split across two frames arrives intact). Between them go JSON control messages:

- ``{"type": "cursor", "resume": "<boot>:<offset>"}``: where the following bytes start. The
  browser adds up the bytes it renders after it and, when it reconnects, asks to resume
  there (``?resume=``): it gets exactly the bytes it lacks, nothing twice.
- ``{"type": "gap", "skipped_bytes": N}``: N bytes before the following ones are lost to this
  viewer (it read slower than the console wrote and they were trimmed from the scrollback).
- ``{"type": "reset"}``: the resume point is no longer in the scrollback; clear the screen,
  the whole scrollback follows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from panel.realtime.hub import CaughtUp, Entry, follow, read_range
from workers.console_streams import OutputEntry, ResumePoint, output_stream

Frame = bytes | dict[str, Any]

# A viewer's queue in the web process; beyond it the viewer falls back to reading from Redis.
VIEWER_QUEUE_BYTES = 256 * 1024
SCROLLBACK_PAGE = 2048  # entries per XRANGE (keystroke echoes make many tiny entries)


def _entries(raw: list[Entry]) -> list[OutputEntry]:
    parsed = []
    for _entry_id, fields in raw:
        try:
            parsed.append(OutputEntry.from_fields(fields))
        except ValueError:
            continue
    return parsed


class OutputCursor:
    """Turns stream entries into frames for one viewer, exactly once and in order: bytes it
    already has are dropped (the agent may relay some twice after Redis lost the stream),
    bytes trimmed before it read them become a gap."""

    def __init__(self, resume: ResumePoint | None = None) -> None:
        self.boot = resume.boot if resume else None
        self.next = resume.offset if resume else 0

    def feed(self, entries: list[OutputEntry]) -> list[Frame]:
        frames: list[Frame] = []
        chunk = bytearray()

        def flush() -> None:
            if chunk:
                frames.append(bytes(chunk))
                chunk.clear()

        for entry in entries:
            data, offset = entry.data, entry.offset
            if not data:
                continue
            if entry.boot != self.boot:
                flush()
                frames.append(cursor_message(entry.boot, offset))
                self.boot = entry.boot
            elif offset + len(data) <= self.next:
                continue
            elif offset < self.next:
                data = data[self.next - offset:]
                offset = self.next
            elif offset > self.next:
                flush()
                frames.append({"type": "gap", "skipped_bytes": offset - self.next})
                frames.append(cursor_message(entry.boot, offset))
            chunk += data
            self.next = offset + len(data)
        flush()
        return frames


def cursor_message(boot: str, offset: int) -> dict[str, Any]:
    return {"type": "cursor", "resume": str(ResumePoint(boot, offset))}


def resume_index(entries: list[OutputEntry], resume: ResumePoint) -> int | None:
    """Index of the first entry holding bytes the viewer lacks; None when output after its
    resume point was trimmed (or its boot is gone from a scrollback that holds others)."""
    seen = False
    for index, entry in enumerate(entries):
        if entry.boot != resume.boot:
            if seen:
                return index  # the viewer had all of its boot; the next one starts here
            continue
        if not seen:
            seen = True
            if entry.offset > resume.offset:
                return None
        if entry.offset + len(entry.data) > resume.offset:
            return index
    return len(entries) if seen or not entries else None


async def _scrollback(key: str) -> tuple[list[OutputEntry], str]:
    """The whole retained output (the agent keeps it bounded) and the id of its last entry."""
    entries: list[OutputEntry] = []
    position = "0-0"
    while page := await read_range(key, position, count=SCROLLBACK_PAGE):
        entries += _entries(page)
        position = page[-1][0]
        if len(page) < SCROLLBACK_PAGE:
            break
    return entries, position


async def console_frames(host_name: str, uuid: str, resume: ResumePoint | None) -> AsyncIterator[Frame]:
    """Frames for one viewer: from its resume point (or the whole scrollback), then live."""
    key = output_stream(host_name, uuid)
    entries, position = await _scrollback(key)
    start = 0
    cursor = OutputCursor()
    if resume is not None:
        index = resume_index(entries, resume)
        if index is None:
            yield {"type": "reset"}
        else:
            start, cursor = index, OutputCursor(resume)
    for frame in cursor.feed(entries[start:]):
        yield frame
    async for batch in follow(key, position, max_bytes=VIEWER_QUEUE_BYTES):
        if isinstance(batch, CaughtUp):
            continue  # what was trimmed meanwhile shows up as a gap in the offsets
        for frame in cursor.feed(_entries(batch)):
            yield frame
