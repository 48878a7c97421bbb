"""The container's writable layer: an ext4 filesystem in a sparse file, sized by the plan.

``<state>/containers/<uuid>/disk.img`` holds the overlay's upper and work directories, so the
plan's disk size is a hard limit (ENOSPC inside the container) and the host only pays for the
blocks written. Measured: sparse file + mkfs.ext4 (lazy init) ~13 ms, loop + mount ~1 ms.

The monitor mounts it on ``<state>/containers/<uuid>/rw`` before the container's mount namespace
is created, and detaches that host-side mount as soon as the overlay is up: the container's
namespace then holds the only reference, so when the container dies the filesystem is
unmounted and the loop device (auto-clear) released by the kernel, with nothing left to clean.

Besides ``upper/`` and ``work/`` it holds an application container's ``volumes/`` (``/data``
and the image's declared volumes): on the same disk, so the plan's size covers them, but
outside the overlay, so an upgrade can start the writable layer afresh and keep them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

from workers.drivers.base import DriverError
from workers.drivers.container.syscalls import MS_NODEV, MS_NOSUID, mount, umount

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd, block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DriverError(f"{what}: {detail[-1] if detail else f'exit status {result.returncode}'}")


def create_disk(path: Path, size_bytes: int, owner: int) -> None:
    """A fresh, empty filesystem of ``size_bytes`` whose root directory belongs to ``owner``."""
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "wb") as f:
        f.truncate(size_bytes)
    try:
        # -m 0: ext4's reserved blocks serve the host's uid 0, never the container's root
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E",
              f"lazy_itable_init=1,lazy_journal_init=1,root_owner={owner}:{owner}", str(tmp)],
             f"cannot create the {size_bytes >> 30} GiB disk {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def grow_disk(path: Path, size_bytes: int) -> None:
    """Enlarge the (unmounted) filesystem to ``size_bytes``; shrinking is refused."""
    current = path.stat().st_size
    if size_bytes < current:
        raise DriverError(f"the disk cannot shrink from {current >> 30} GiB to {size_bytes >> 30} GiB")
    if size_bytes == current:
        return
    os.truncate(path, size_bytes)
    _run(["e2fsck", "-f", "-p", str(path)], f"cannot check {path} before resizing")
    _run(["resize2fs", str(path)], f"cannot resize {path}")


def disk_used(path: Path) -> int:
    """Bytes the disk occupies on the host (its file is sparse)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def mount_disk(path: Path, target: Path) -> None:
    """Attach ``path`` to a free loop device (auto-clear) and mount it on ``target``."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    backing = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        config = _LOOP_CONFIG.pack(backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                                   b"", b"", b"", 0, 0, *([0] * 8))
        for _ in range(32):  # another process may grab the free device first: EBUSY, retry
            device = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
            loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            try:
                try:
                    fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                # the mount keeps the device; closing our fd lets auto-clear act on unmount
                mount(device, target, "ext4", MS_NOSUID | MS_NODEV, "discard")
                return
            finally:
                os.close(loop)
        raise DriverError("no free loop device for the container's disk")
    finally:
        os.close(backing)
        os.close(ctl)


def _in_use(path: Path) -> bool:
    """Whether a loop device still serves ``path`` (a container's namespace being torn down)."""
    target = str(path.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == target:
                return True
        except OSError:
            continue
    return False


def reset_layer(path: Path, mountpoint: Path, layers: tuple[Path, ...], timeout: float = 5.0) -> None:
    """Delete ``layers`` (the overlay's upper and work directories) from the stopped
    container's disk; everything else on it (the volumes) stays."""
    deadline = time.monotonic() + timeout
    while _in_use(path):  # mounting it a second time at once would corrupt it
        if time.monotonic() > deadline:
            raise DriverError(f"the disk {path} is still in use by the stopped container")
        time.sleep(0.02)
    mount_disk(path, mountpoint)
    try:
        for layer in layers:
            if layer.exists():
                shutil.rmtree(layer)  # never follows the links the container made
    finally:
        umount(mountpoint)
