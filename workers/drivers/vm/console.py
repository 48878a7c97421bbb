"""An asyncio console session on a VM's serial port, numbered by byte offset in its log.

Output is read from the serial log virtlogd writes (``<log file=... append='on'/>``): it holds
every byte the guest printed since the instance was created, viewers or not, so offsets are
file offsets, stable across relay restarts, and a re-attaching relay replays exactly what it
missed. Input goes through a ``virDomainOpenConsole`` stream (opened with FORCE, so a stale
session left by a crashed relay cannot block the new one); the stream's output is drained and
only used as a prompt to read the log, which keeps latency at the stream's.

virtlogd rotates the log at 2 MiB (``serial.log`` → ``serial.log.0``). A session that sees the
rotation finishes the old file first and carries the offset on; the offset where the current
file starts is kept in ``serial.log.base`` so later sessions number bytes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import libvirt

from workers.drivers.base import DriverError
from workers.drivers.vm.connection import describe

_CHUNK = 64 * 1024
_POLL = 0.05  # fallback poll when the stream's wake-up arrives before virtlogd wrote the file
_STREAM_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                  | libvirt.VIR_STREAM_EVENT_HANGUP)


class SerialLog:
    """Reads a virtlogd-managed log by logical offset, following rotations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._base_file = path.with_name(path.name + ".base")
        self._fd: int | None = None
        self._ino = 0
        self.base = 0  # logical offset of the open file's first byte

    def open(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        self.base = self._recorded_base(st.st_ino)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._ino = os.fstat(self._fd).st_ino
        self._record_base()

    def _recorded_base(self, ino: int) -> int:
        try:
            rec = json.loads(self._base_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0
        if rec.get("inode") == ino:
            return int(rec["base"])
        # Rotated while nobody watched: the file we knew is now a backup (or gone).
        rotated = self.path.with_name(self.path.name + ".0")
        with contextlib.suppress(FileNotFoundError):
            if rotated.stat().st_ino == rec.get("inode"):
                return int(rec["base"]) + rotated.stat().st_size
        return int(rec["base"])

    def _record_base(self) -> None:
        tmp = self._base_file.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({"inode": self._ino, "base": self.base}))
            os.replace(tmp, self._base_file)

    @property
    def end(self) -> int:
        if self._fd is None:
            return 0
        return self.base + os.fstat(self._fd).st_size

    def read(self, offset: int) -> tuple[int, bytes]:
        """Bytes from ``offset`` (clamped to what is still kept), as (their offset, data)."""
        if self._fd is None:
            self.open()
            if self._fd is None:
                return offset, b""
        offset = max(offset, self.base)
        data = os.pread(self._fd, _CHUNK, offset - self.base)
        if data:
            return offset, data
        # At the end of our file: has virtlogd rotated to a new one?
        try:
            ino = self.path.stat().st_ino
        except FileNotFoundError:
            return offset, b""
        if ino != self._ino:
            self.base += os.fstat(self._fd).st_size
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._ino = os.fstat(self._fd).st_ino
            self._record_base()
            return self.read(offset)
        return offset, b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LibvirtConsoleSession:
    """One attached serial console (implements workers.drivers.base.ConsoleSession)."""

    def __init__(self, log: SerialLog, from_offset: int) -> None:
        self._log = log
        self._offset = from_offset
        self._conn: libvirt.virConnect | None = None
        self._stream: libvirt.virStream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._hung_up = False
        self._closed = False

    @property
    def offset(self) -> int:
        """Offset of the next byte read() will return."""
        return self._offset

    def attach(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        """Open the console stream (blocking; call from a worker thread)."""
        self._conn = conn
        stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            stream.eventAddCallback(_STREAM_EVENTS, self._on_stream_event, None)
        except libvirt.libvirtError as err:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise DriverError(
                f"cannot attach to the console of {dom.name()}: {describe(err)}") from err
        self._stream = stream

    def _on_stream_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        # libvirt's event thread. The bytes themselves are also in the log, which is what
        # read() returns; here we drain the pty so the guest never blocks, and wake the reader.
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(_CHUNK)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:
                    break
                if not data:
                    self._hung_up = True
                    break
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._hung_up = True
        if self._hung_up:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def read(self) -> tuple[int, bytes] | None:
        self._loop = asyncio.get_running_loop()
        grace = 2  # after a hang-up, look at the log twice more: virtlogd may be a bit behind
        while not self._closed:
            offset, data = self._log.read(self._offset)
            if data:
                self._offset = offset + len(data)
                return offset, data
            if self._stream is None or self._hung_up:
                if grace == 0:
                    return None
                grace -= 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL)
        return None

    async def write(self, data: bytes) -> None:
        if self._stream is None or self._hung_up:
            raise DriverError("the console is not connected (the VM is not running)")
        sent = 0
        while sent < len(data):
            try:
                n = self._stream.send(data[sent:])
            except libvirt.libvirtError as err:
                raise DriverError(f"console write failed: {describe(err)}") from err
            if n == -2:
                await asyncio.sleep(0.01)
                continue
            sent += n

    async def resize(self, rows: int, cols: int) -> None:
        """A serial line has no window size; the guest learns it with ``stty`` if it cares."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        stream, conn = self._stream, self._conn
        self._stream = self._conn = None
        await asyncio.to_thread(_close_stream, stream, conn)
        self._log.close()


def _close_stream(stream: libvirt.virStream | None, conn: libvirt.virConnect | None) -> None:
    if stream is not None:
        with contextlib.suppress(libvirt.libvirtError):
            stream.eventRemoveCallback()
        try:
            stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
    if conn is not None:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
