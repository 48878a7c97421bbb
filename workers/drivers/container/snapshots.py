"""Snapshots of a container's writable layer, and the consistent copies of it that backups and
moves between hosts archive (``workers/backups.py``).

The writable layer is one file, ``disk.img``: an ext4 filesystem in a sparse file, mounted only
inside the container's mount namespace while it runs (``rootfs.py``). A consistent copy of it
is taken with the container's cgroup frozen (no process can write) after ``syncfs`` on the
container's root has pushed everything the kernel still held for that filesystem through the
loop device into the file; then the file is copied (``cp --sparse=always --reflink=auto``:
only the blocks in use are read and written; on a filesystem with reflinks, XFS or btrfs, the
copy shares them and takes no time) and the container thawed. The copy is a filesystem that
was cleanly synced: mounting it replays at most the journal's last commit.

A snapshot is such a copy kept beside the container: ``<dir>/snapshots/<name>/disk.img`` and
``meta.json``, so destroying the container removes its snapshots too. Restoring one stops the
container, puts the copy in place of ``disk.img`` and starts it again if it was running (a
snapshot holds files, not processes).

Files on the disk belong to host uids of the container's range (its root is
``uid_base + uid_slot × 65536``). A disk installed for another range (another host, another
slot) has every owner shifted into the new one first (``shift_owners``), as LXD does for
unprivileged containers it copies.

This module works with the driver's per-container lock and its stop and start steps: it is
part of the driver, kept apart from ``driver.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from workers.drivers.base import (
    DriverError,
    InstanceNotFound,
    InstanceSpec,
    InstanceStatus,
    PowerState,
    SnapshotInfo,
)
from workers.drivers.container import rootfs
from workers.drivers.container.cgroups import UNIFIED, Cgroup
from workers.drivers.container.driver import ContainerDriver
from workers.drivers.container.state import ContainerPaths, root_uid, write_atomic
from workers.drivers.container.syscalls import umount

SNAPSHOTS = "snapshots"
DISK = "disk.img"
META = "meta.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
STOP_TIMEOUT = 10.0
FREEZE_TIMEOUT = 5.0
IDS = 65536

_libc = ctypes.CDLL(None, use_errno=True)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DriverError(f"invalid snapshot name {name!r}: 1-64 of a-z, 0-9, '-' and '_'")
    return name


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` reading and writing only its allocated blocks."""
    result = subprocess.run(["cp", "--sparse=always", "--reflink=auto", "--", str(source), str(dest)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        dest.unlink(missing_ok=True)
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "cp failed"
        if "No space left" in detail:
            raise DriverError(f"not enough space on the host for a copy of the disk ({detail})")
        raise DriverError(f"cannot copy the disk: {detail}")


def allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


class ContainerSnapshots:
    """Snapshots and disk copies of one host's containers (a ``DiskStore``)."""

    def __init__(self, driver: ContainerDriver) -> None:
        self.driver = driver
        self.host = driver.host

    # -- snapshots ---------------------------------------------------------------------------

    def take(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        check_name(name)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self.driver._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            folder = paths.dir / SNAPSHOTS / name
            if (folder / META).exists():  # taken already (a retried operation)
                return _info(folder)
            staging = folder.with_name(f".{name}.new")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(mode=0o700, parents=True)
            try:
                self._copy_consistent(paths, spec.uuid, staging / DISK)
                write_atomic(staging / META, json.dumps({"name": name, "created_at": time.time()}))
                os.replace(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return _info(folder)

    def restore(self, spec: InstanceSpec, name: str) -> InstanceStatus:
        """Roll the writable layer back to the snapshot; running again afterwards if it ran."""
        check_name(name)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self.driver._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            snapshot = paths.dir / SNAPSHOTS / name / DISK
            if not (snapshot.parent / META).exists():
                raise DriverError(f"container {spec.uuid} has no snapshot {name!r} on {self.host.name}")
            # Copied before anything stops: a full host refuses the restore with the
            # container as it was.
            staged = paths.dir / "disk.img.restore"
            copy_sparse(snapshot, staged)
            try:
                was_running = self._stop(paths, spec.uuid)
                os.replace(staged, paths.disk)
            finally:
                staged.unlink(missing_ok=True)
            if was_running:
                return self.driver._start_locked(spec, paths)
            return self.driver._status(paths, spec.uuid)

    def delete(self, spec: InstanceSpec, name: str) -> None:
        check_name(name)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self.driver._locked(paths):
            shutil.rmtree(paths.dir / SNAPSHOTS / name, ignore_errors=True)

    def list(self, uuid: str) -> list[SnapshotInfo]:
        root = ContainerPaths.of(self.host, uuid).dir / SNAPSHOTS
        found = [_info(p) for p in root.iterdir() if (p / META).exists()] if root.is_dir() else []
        return sorted(found, key=lambda s: s.created_at)

    # -- disk copies (backups, moves) --------------------------------------------------------

    def export_disk(self, spec: InstanceSpec, dest_dir: Path) -> Path:
        paths = ContainerPaths.of(self.host, spec.uuid)
        dest = dest_dir / DISK
        with self.driver._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            self._copy_consistent(paths, spec.uuid, dest)
        return dest

    def root_uid(self, spec: InstanceSpec) -> int:
        """Host uid of the container's root here: the owner shift's reference."""
        return root_uid(self.host, spec.uid_slot)

    def install_disk(self, spec: InstanceSpec, disk: Path, *, start: bool,
                     source_root_uid: int | None = None) -> InstanceStatus:
        """``source_root_uid``: the container's root uid where ``disk`` was made; its files'
        owners are shifted into this host's range for ``spec.uid_slot`` when it differs."""
        self.driver._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        new = False
        with self.driver._host_lock():
            if not paths.dir.exists():
                self.driver._check_slot(spec)
                paths.dir.mkdir(mode=0o711, parents=True)
                new = True
        try:
            with self.driver._locked(paths) as present:
                if not present:
                    raise DriverError(f"container {spec.uuid} was destroyed while its disk was installed")
                staged = paths.dir / "disk.img.restore"
                _move_or_copy(disk, staged)
                try:
                    target_root = root_uid(self.host, spec.uid_slot)
                    if source_root_uid is not None and source_root_uid != target_root:
                        shift_owners(staged, paths.rw, source_root_uid, target_root)
                    was_running = False if new else self._stop(paths, spec.uuid)
                    os.replace(staged, paths.disk)
                finally:
                    staged.unlink(missing_ok=True)
                self.driver._make_dirs(spec, paths)  # mount points and spec.json; the disk is there
                if start or was_running:
                    return self.driver._start_locked(spec, paths)
                return self.driver._status(paths, spec.uuid)
        except BaseException:
            if new:  # nothing half-made stays behind
                self.driver._destroy_quietly(spec.uuid)
            raise

    # -- internals ---------------------------------------------------------------------------

    def _stop(self, paths: ContainerPaths, uuid: str) -> bool:
        """Stop the container (gracefully) and wait until its disk is released; whether it ran."""
        was_running = self.driver._status(paths, uuid).state == PowerState.RUNNING
        self.driver._stop_locked(paths, uuid, timeout=STOP_TIMEOUT)
        _wait_released(paths.disk)
        return was_running

    def _copy_consistent(self, paths: ContainerPaths, uuid: str, dest: Path) -> None:
        status = self.driver._status(paths, uuid)
        if status.state != PowerState.RUNNING or status.pid is None:
            _wait_released(paths.disk)  # a container that just stopped: its unmount finishing
            copy_sparse(paths.disk, dest)
            return
        cgroup = self.driver._stored_cgroup(paths)
        if cgroup is None:
            raise DriverError(f"container {uuid} runs but its cgroups are not recorded")
        with frozen(cgroup):
            sync_container_fs(status.pid)
            copy_sparse(paths.disk, dest)


def _info(folder: Path) -> SnapshotInfo:
    meta = json.loads((folder / META).read_text())
    return SnapshotInfo(name=meta["name"], size_bytes=allocated(folder / DISK),
                        created_at=float(meta.get("created_at", 0)))


def _move_or_copy(source: Path, dest: Path) -> None:
    try:
        os.replace(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_sparse(source, dest)


def _wait_released(disk: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while rootfs._in_use(disk):
        if time.monotonic() > deadline:
            raise DriverError(f"the disk {disk} is still in use by the stopped container")
        time.sleep(0.02)


@contextlib.contextmanager
def frozen(cgroup: Cgroup, timeout: float = FREEZE_TIMEOUT) -> Iterator[None]:
    """Every process of the container stopped where it is (cgroup freezer) until the block ends."""
    cgroup.freeze()
    try:
        deadline = time.monotonic() + timeout
        while not _is_frozen(cgroup):
            if time.monotonic() > deadline:
                raise DriverError("the container did not freeze within "
                                  f"{timeout:g} s (a process stuck in the kernel)")
            time.sleep(0.002)
        yield
    finally:
        cgroup.thaw()


def _is_frozen(cgroup: Cgroup) -> bool:
    paths = {k: Path(v) for k, v in cgroup.paths().items()}
    unified = paths.get("v2") or paths.get(UNIFIED)
    if unified is not None and (unified / "cgroup.events").exists():
        events = dict(line.split() for line in (unified / "cgroup.events").read_text().splitlines())
        return events.get("frozen") == "1"
    freezer = paths.get("freezer")
    if freezer is not None:
        return (freezer / "freezer.state").read_text().strip() == "FROZEN"
    raise DriverError("this host has no cgroup freezer: a running container cannot be copied consistently")


def sync_container_fs(pid: int) -> None:
    """syncfs() on the container's root: overlayfs syncs its upper filesystem (the disk), and
    ext4 flushes through the loop device into disk.img."""
    fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise DriverError(f"cannot sync the container's filesystem: {os.strerror(err)}")
    finally:
        os.close(fd)


def shift_owners(disk: Path, mountpoint: Path, old_root: int, new_root: int) -> int:
    """Move every owner (uid and gid) in ``old_root``'s 65536-id range to the same place in
    ``new_root``'s; returns how many inodes changed. The disk must not be in use."""
    mountpoint.mkdir(mode=0o755, exist_ok=True)
    rootfs.mount_disk(disk, mountpoint)
    changed = 0
    try:
        def shifted(i: int) -> int:
            return i - old_root + new_root if old_root <= i < old_root + IDS else i

        for path in _walk(mountpoint):
            st = os.lstat(path)
            uid, gid = shifted(st.st_uid), shifted(st.st_gid)
            if (uid, gid) == (st.st_uid, st.st_gid):
                continue
            os.lchown(path, uid, gid)
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))  # chown cleared setuid/setgid
            changed += 1
    finally:
        umount(mountpoint)
    return changed


def _walk(root: Path) -> Iterator[str]:
    yield str(root)
    stack = [str(root)]
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                yield entry.path
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
