"""The container's writable layer: an ext4 filesystem in a sparse file, sized by the plan.

``<state>/containers/<uuid>/disk.img`` holds the overlay's upper and work directories, so the
plan's disk size is a hard limit (ENOSPC inside the container) and the host only pays for the
blocks written. mkfs.ext4 (lazy init) runs once per host and disk size, into a template
(``<state>/disk-templates/ext4-<bytes>.img``, ~600 KiB of metadata in a sparse file); a new
disk is a copy of the template's allocated extents (copy_file_range, ~0.3 ms against ~5 ms for
mkfs, 15-20 ms on a loaded host). The copies share the template's filesystem UUID, which
nothing looks a container disk up by. The root directory's owner is set when the disk is first
mounted for a start (``claim_root``), so one template serves every uid range.

For a start the driver mounts it as a *detached* mount (``open_disk``: fsmount, never in the
host's mount table), prepares it through ``/proc/self/fd/<fd>`` and hands the descriptor to the
shim, whose PID 1 attaches it on ``rw`` in the container's own mount namespace: that namespace
then holds the only reference, so when the container dies the filesystem is unmounted and the
loop device (auto-clear) released by the kernel, with nothing left to clean.

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
from workers.drivers.container.syscalls import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MS_NODEV,
    MS_NOSUID,
    fsmount,
    mount,
    umount,
)

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


TEMPLATES = "disk-templates"


def template_dir(state_dir: Path) -> Path:
    """Where a host keeps its empty-disk templates (one per size; removed by teardown_host)."""
    return state_dir / TEMPLATES


def _mkfs(path: Path, size_bytes: int, what: str) -> None:
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    # -m 0: ext4's reserved blocks serve the host's uid 0, never the container's root
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E",
          "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", str(path)], what)


def _template(templates: Path, size_bytes: int) -> Path:
    """The empty filesystem of ``size_bytes``, made once (concurrent makers: the last wins,
    each one whole: written under a private name, then renamed)."""
    template = templates / f"ext4-{size_bytes}.img"
    if template.exists():
        return template
    templates.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = templates / f".{template.name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        _mkfs(tmp, size_bytes, f"cannot create a {size_bytes >> 30} GiB disk in {templates}")
        os.replace(tmp, template)
    finally:
        tmp.unlink(missing_ok=True)
    return template


def _copy_extents(source: Path, dest: Path) -> None:
    """Copy ``source`` into the new file ``dest`` of the same size: only its data extents, so
    ``dest`` stays as sparse as ``source``."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:  # ENXIO: no data after offset
                    if exc.errno == errno.ENXIO:
                        break
                    raise
                end = os.lseek(src, start, os.SEEK_HOLE)
                done = start
                while done < end:
                    n = os.copy_file_range(src, dst, end - done, done, done)
                    if n == 0:
                        raise OSError(errno.EIO, f"{source} shrank while being copied")
                    done += n
                offset = end
        finally:
            os.close(dst)
    finally:
        os.close(src)


def create_disk(path: Path, size_bytes: int, templates: Path) -> None:
    """A fresh, empty filesystem of ``size_bytes`` (its root directory belongs to the host's
    root until ``claim_root``), copied from the host's template for that size."""
    template = _template(templates, size_bytes)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    try:
        _copy_extents(template, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise DriverError(f"cannot create the {size_bytes >> 30} GiB disk {path}: "
                          f"{exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def claim_root(mountpoint: Path, owner: int) -> None:
    """Give the mounted disk's root directory to the container's root (host uid ``owner``)."""
    st = os.stat(mountpoint)
    if (st.st_uid, st.st_gid) != (owner, owner):
        os.chown(mountpoint, owner, owner)


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


def _with_loop(path: Path, use) -> int | None:
    """Attach ``path`` to a free loop device (auto-clear) and call ``use(device)``, which must
    take its own reference to the device (a mount): auto-clear releases it with that one."""
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
                return use(device)
            finally:
                os.close(loop)
        raise DriverError("no free loop device for the container's disk")
    finally:
        os.close(backing)
        os.close(ctl)


def mount_disk(path: Path, target: Path) -> None:
    """Attach ``path`` to a free loop device (auto-clear) and mount it on ``target``."""
    _with_loop(path, lambda device: mount(device, target, "ext4", MS_NOSUID | MS_NODEV, "discard"))


def open_disk(path: Path) -> int:
    """Mount ``path`` (through a free loop device, auto-clear) as a detached mount: a file
    descriptor, never in any mount table until the container's PID 1 attaches it in its own
    namespace. Closing the last descriptor of an unattached mount unmounts it and frees the
    loop device. Its files are reachable meanwhile below ``/proc/self/fd/<fd>``."""
    try:
        return _with_loop(path, lambda device: fsmount("ext4", device, ("discard",),
                                                        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV))
    except OSError as exc:
        raise DriverError(f"cannot mount the container's disk {path}: {exc.strerror}") from exc


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
