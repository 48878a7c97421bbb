"""Backups, restores, snapshots and moves between hosts, as a host runs them.

**Archive format** (``berth-backup/1``): a zstd-compressed tar (GNU tar, sparse members, numeric
owners) holding ``manifest.json`` first, then the instance's disk as ``export_disk`` copied it
(containers: ``disk.img``, a sparse ext4 image; VMs: ``disk.qcow2``, the overlay without its
snapshots, and ``config.iso``). The manifest says what it is (kind, uuid, hostname, image name
and checksum, the container root's host uid, sizes); it carries no secrets. Written as
``<target>/<uuid>/.<name>.partial``, fsynced, then renamed to ``<name>.tar.zst``, beside a
``<name>.tar.zst.sha256`` in ``sha256sum`` format for people. The SHA-256 of the whole file is
returned to the panel, which keeps it: a restore reads the archive once to check it against
that record **before anything is changed** (a truncated, corrupted or replaced archive is
refused with the instance untouched), then unpacks it into a staging directory on the host
(zstd checks its own frame checksums, tar its headers), checks what came out (only the
expected regular files, the right kind and image), and only then replaces the disk.

**Targets** are directories, local or mounted (NFS, CIFS, a disk): the panel says which one in
each task. A move between hosts goes through a target both hosts mount: the source writes the
archive, the target host restores it, the source removes its copy once the target runs the
instance. The hosts never talk to each other and never see the database; a host-to-host
stream would need the hosts to reach each other and trust each other's credentials.

Each step runs inside the host worker's operation (``hostworker.perform``) and reports its
result (sizes, checksum, where the archive is) back with its outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.drivers.base import (
    DiskStore,
    DriverError,
    InstanceSpec,
    InstanceStatus,
    PowerState,
)

FORMAT = "berth-backup/1"
SUFFIX = ".tar.zst"
MANIFEST = "manifest.json"
ARCHIVE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
DISK_FILES = {"container": ("disk.img",), "vm": ("disk.qcow2", "config.iso")}
CHUNK = 1 << 20
PROGRESS_EVERY = 1.0  # seconds between progress reports
STOP_TIMEOUT = 10.0

Progress = Callable[[str], None]


class ArchiveError(DriverError):
    """An archive cannot be written or is not fit to restore from; the message says why."""


@dataclass(frozen=True)
class StepOutcome:
    """What a backup, restore, snapshot or move step leaves: the instance's power state and
    the result the panel records (sizes, checksum, path)."""

    status: InstanceStatus
    result: dict[str, Any] = field(default_factory=dict)


# --- archives -----------------------------------------------------------------------------

def allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def archive_path(target: str, uuid: str, name: str) -> Path:
    """Where an archive goes: ``<target>/<uuid>/<name>.tar.zst`` (names are the panel's)."""
    root = Path(target)
    if not root.is_absolute():
        raise ArchiveError(f"the backup target must be an absolute path, not {target!r}")
    if not ARCHIVE_NAME_RE.match(name):
        raise ArchiveError(f"invalid archive name {name!r}")
    return root / uuid / f"{name}{SUFFIX}"


class _Meter:
    """Reports "<what> 42 % (1.2 of 2.9 GiB)" at most once per PROGRESS_EVERY."""

    def __init__(self, what: str, total: int, progress: Progress) -> None:
        self.what, self.total, self.progress = what, max(total, 1), progress
        self.done = 0
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            percent = min(99, self.done * 100 // self.total)
            self.progress(f"{self.what} {percent} % ({_size(self.done)} of {_size(self.total)})")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _space_error(where: Path, exc: OSError) -> ArchiveError:
    return ArchiveError(f"cannot write the archive to {where}: {exc.strerror or exc}"
                        + (" (the backup target is full)" if exc.errno == 28 else ""))


def write_archive(dest: Path, staging: Path, names: list[str], manifest: dict[str, Any],
                  progress: Progress) -> dict[str, Any]:
    """Pack ``staging``'s ``names`` (and the manifest) into ``dest``; returns path, size and
    SHA-256. Nothing is left at ``dest`` or beside it when it fails."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    meter = _Meter("Writing the archive:", sum(allocated(staging / n) for n in names), progress)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _space_error(dest.parent, exc) from None
    partial = dest.with_name(f".{dest.name}.partial")
    tar = subprocess.Popen(["tar", "--sparse", "--numeric-owner", "-cf", "-", "-C", str(staging),
                            MANIFEST, *names], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3", "-c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    digest = hashlib.sha256()
    size = 0
    pumped: list[BaseException] = []

    def pump() -> None:  # tar → zstd, counting for the progress meter
        try:
            while chunk := tar.stdout.read(CHUNK):
                zstd.stdin.write(chunk)
                meter.add(len(chunk))
        except BaseException as exc:  # zstd gone: its own error says why
            pumped.append(exc)
        finally:
            with contextlib.suppress(OSError):
                zstd.stdin.close()

    thread = threading.Thread(target=pump, name="archive-pump", daemon=True)
    thread.start()
    try:
        written = False
        try:
            with open(partial, "wb") as out:
                while chunk := zstd.stdout.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            written = True
        except OSError as exc:
            raise _space_error(dest.parent, exc) from None
        finally:
            if not written:  # nobody reads zstd's output any more: both would wait for ever
                for proc in (tar, zstd):
                    if proc.poll() is None:
                        proc.kill()
            thread.join()
            tar.wait()
            zstd.wait()
        if tar.returncode != 0:
            raise ArchiveError(f"cannot read the disk copy: {_stderr(tar)}")
        if zstd.returncode != 0:
            raise ArchiveError(f"cannot compress the archive: {_stderr(zstd)}")
        os.replace(partial, dest)
        checksum = digest.hexdigest()
        dest.with_name(dest.name + ".sha256").write_text(f"{checksum}  {dest.name}\n")
        _fsync_dir(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        for proc in (tar, zstd):
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
    progress(f"Archive written: {_size(size)}")
    return {"path": str(dest), "size_bytes": size, "sha256": checksum}


def _stderr(proc: subprocess.Popen) -> str:
    text = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    return text.splitlines()[-1] if text else f"exit status {proc.returncode}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_archive(path: Path, sha256: str, progress: Progress) -> None:
    """Refuse an archive that is missing, truncated, damaged or not the one the panel
    recorded: the whole file is read and its SHA-256 compared first."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise ArchiveError("the panel has no checksum for this archive: it cannot be checked, so it is not used")
    try:
        total = path.stat().st_size
        meter = _Meter("Checking the archive:", total, progress)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                meter.add(len(chunk))
    except FileNotFoundError:
        raise ArchiveError(f"the archive {path} is missing from the backup target") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive {path}: {exc.strerror or exc}") from None
    if digest.hexdigest() != sha256:
        raise ArchiveError(
            f"the archive {path.name} is damaged or incomplete ({_size(total)}, SHA-256 "
            f"{digest.hexdigest()[:16]}…, but {sha256[:16]}… was recorded when it was made); "
            "nothing was changed")


def extract_archive(path: Path, dest: Path, *, kind: str) -> dict[str, Any]:
    """Unpack a verified archive into the empty directory ``dest``; returns its manifest
    after checking that exactly the expected regular files came out."""
    dest.mkdir(mode=0o700, parents=True)
    with open(path, "rb") as src:
        zstd = subprocess.Popen(["zstd", "-q", "-d", "-c"], stdin=src, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        tar = subprocess.run(["tar", "--sparse", "--numeric-owner", "--no-same-permissions", "-xf", "-",
                              "-C", str(dest)], stdin=zstd.stdout, capture_output=True, text=True)
        zstd.stdout.close()
        zstd.wait()
    if zstd.returncode != 0:
        raise ArchiveError(f"the archive {path.name} does not decompress: {_stderr(zstd)}")
    if tar.returncode != 0:
        # tar ends with "Exiting with failure status due to previous errors": the first line
        # says what went wrong.
        lines = [line for line in tar.stderr.strip().splitlines() if "Exiting with failure" not in line]
        detail = lines[0] if lines else "tar failed"
        if "No space left" in tar.stderr:
            detail = next(line for line in lines if "No space left" in line)
            raise ArchiveError(f"not enough space on the host to unpack the archive ({detail})")
        raise ArchiveError(f"the archive {path.name} does not unpack: {detail}")
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ArchiveError(f"{path.name} is not a Berth backup (no readable manifest)") from None
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{path.name} has format {manifest.get('format')!r}; this host reads {FORMAT}")
    if manifest.get("kind") != kind:
        raise ArchiveError(f"{path.name} is a backup of a {manifest.get('kind')}, not of a {kind}")
    expected = set(manifest.get("files", [])) | {MANIFEST}
    allowed = set(DISK_FILES[kind]) | {MANIFEST}
    found = {entry.name: entry for entry in os.scandir(dest)}
    if not expected <= allowed or set(found) != expected or DISK_FILES[kind][0] not in found:
        raise ArchiveError(f"{path.name} holds {sorted(found)}, not the files of a {kind} backup")
    for entry in found.values():
        if not entry.is_file(follow_symlinks=False):
            raise ArchiveError(f"{path.name}: {entry.name} is not a regular file")
    return manifest


def removable_archive(path: Any) -> Path | None:
    """``path`` when it names a Berth archive (``/…/<uuid hex>/<name>.tar.zst``), else None: what
    the panel may ask a host to remove (``hostworker.remove_archive``), and nothing else."""
    if not isinstance(path, str):
        return None
    archive = Path(path)
    if (not archive.is_absolute() or ".." in archive.parts or not archive.name.endswith(SUFFIX)
            or not ARCHIVE_NAME_RE.match(archive.name[: -len(SUFFIX)])
            or not re.fullmatch(r"[0-9a-f]{32}", archive.parent.name)):
        return None
    return archive


def remove_archive(path: str) -> None:
    archive = Path(path)
    for victim in (archive, archive.with_name(archive.name + ".sha256"),
                   archive.with_name(f".{archive.name}.partial")):
        victim.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        archive.parent.rmdir()  # the instance's folder, when it was its last archive


# --- steps --------------------------------------------------------------------------------

def lease_id(operation_id: int, step: str = "") -> str:
    """The lease (``workers/leases.py``) of an operation, or of one step of it: a move's steps
    run on two hosts, and the source host runs two of them (export, then cleanup or recover)."""
    return f"{operation_id}:{step}" if step else str(operation_id)


ACTIONS = ("snapshot", "restore_snapshot", "delete_snapshot", "backup", "restore_backup", "migrate")


def disk_store(driver: Any) -> DiskStore:
    if driver.kind == "container":
        from workers.drivers.container.snapshots import ContainerSnapshots  # noqa: PLC0415

        return ContainerSnapshots(driver)
    from workers.drivers.vm.snapshots import VmSnapshots  # noqa: PLC0415 (libvirt only for VMs)

    return VmSnapshots(driver)


class Steps:
    """One host's steps; ``boot`` carries the VM's ``before_resume`` (the console attach)."""

    def __init__(self, driver: Any, *, progress: Progress, boot: dict[str, Any]) -> None:
        self.driver = driver
        self.host = driver.host
        self.store = disk_store(driver)
        self.progress = progress
        self.boot = boot

    def run(self, action: str, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        step = params.get("step") or action
        handler = getattr(self, f"_{step}", None)
        if action not in ACTIONS or handler is None:
            raise DriverError(f"Unknown step {step!r} of {action!r}.")
        return handler(spec, params)

    # -- snapshots ---------------------------------------------------------------------------

    def _snapshot(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        info = self.store.take(spec, params["snapshot"])
        return StepOutcome(self.driver.status(spec.uuid), {
            "snapshot": info.name, "size_bytes": info.size_bytes, "with_memory": info.with_memory})

    def _restore_snapshot(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        extra = self.boot if spec.kind == "vm" else {}
        return StepOutcome(self.store.restore(spec, params["snapshot"], **extra))

    def _delete_snapshot(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        self.store.delete(spec, params["snapshot"])
        return StepOutcome(self.driver.status(spec.uuid))

    # -- backups -----------------------------------------------------------------------------

    def _backup(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        result = self._archive(spec, params)
        return StepOutcome(self.driver.status(spec.uuid), result)

    def _restore_backup(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        status = self._unpack_and_install(spec, params, start=bool(params.get("start")))
        return StepOutcome(status)

    # -- moving between hosts ----------------------------------------------------------------

    def _export(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        """Source host: stop the instance and write it to the shared target. A failure leaves
        it as it was (started again if it ran) and no archive behind."""
        was_running = self.driver.status(spec.uuid).state == PowerState.RUNNING
        if was_running:
            self.progress("Stopping the instance for the move")
            self.driver.stop(spec, timeout=STOP_TIMEOUT)
        try:
            result = self._archive(spec, params)
        except BaseException:
            if was_running:
                with contextlib.suppress(DriverError):
                    self.driver.start(spec, **self.boot)
            raise
        return StepOutcome(self.driver.status(spec.uuid), {**result, "was_running": was_running})

    def _import(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        """Target host: restore the archive as this host's instance and start it (proof that
        it runs here); stopped again afterwards when it was stopped before the move."""
        try:
            status = self._unpack_and_install(spec, params, start=True)
            if not params.get("keep_running"):
                status = self.driver.stop(spec, timeout=STOP_TIMEOUT)
        except BaseException:
            # The instance is here only because of this move (the panel never moves one to
            # the host it is on): nothing of it may stay.
            with contextlib.suppress(DriverError):
                self.driver.destroy(spec)
            raise
        return StepOutcome(status)

    def _abort(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        """Target host, after a failed move: whatever an interrupted import left goes."""
        self.driver.destroy(spec)
        return StepOutcome(InstanceStatus(uuid=spec.uuid, state=PowerState.ABSENT))

    def _recover(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        """Source host, after a failed move: the instance as it was, the archive gone."""
        if params.get("path"):
            remove_archive(params["path"])
        if params.get("start") and self.driver.status(spec.uuid).state != PowerState.RUNNING:
            return StepOutcome(self.driver.start(spec, **self.boot))
        return StepOutcome(self.driver.status(spec.uuid))

    def _cleanup(self, spec: InstanceSpec, params: dict[str, Any]) -> StepOutcome:
        """Source host, once the target runs the instance: remove the old copy and the archive."""
        self.driver.destroy(spec)
        if params.get("path"):
            remove_archive(params["path"])
        return StepOutcome(InstanceStatus(uuid=spec.uuid, state=PowerState.ABSENT))

    # -- shared ------------------------------------------------------------------------------

    def _staging(self, name: str) -> Path:
        staging = self.host.state_dir / "transfer" / name
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return staging

    def _archive(self, spec: InstanceSpec, params: dict[str, Any]) -> dict[str, Any]:
        dest = archive_path(params["target"], spec.uuid, params["archive"])
        staging = self._staging(params["archive"])
        staging.mkdir(mode=0o700)
        try:
            self.progress("Copying the disk")
            started = time.monotonic()
            disk = self.store.export_disk(spec, staging)
            copied = time.monotonic() - started
            names = sorted(p.name for p in staging.iterdir())
            manifest = {
                "format": FORMAT, "kind": spec.kind, "uuid": spec.uuid, "hostname": spec.hostname,
                "image": {"name": spec.image.name, "checksum": spec.image.checksum},
                "disk_gib": spec.disk_gib, "files": names, "host": self.host.name,
                "created_at": time.time(), "disk_allocated_bytes": allocated(disk),
            }
            if spec.kind == "container":
                manifest["root_uid"] = self.store.root_uid(spec)
            result = write_archive(dest, staging, names, manifest, self.progress)
            return {**result, "copy_seconds": round(copied, 3)}
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _unpack_and_install(self, spec: InstanceSpec, params: dict[str, Any], *, start: bool) -> InstanceStatus:
        path = Path(params["path"])
        verify_archive(path, params.get("sha256", ""), self.progress)
        staging = self._staging(f"restore-{spec.uuid}")
        try:
            self.progress("Unpacking the archive")
            manifest = extract_archive(path, staging, kind=spec.kind)
            image = manifest.get("image") or {}
            if image.get("name") != spec.image.name:
                raise ArchiveError(f"the backup was made over image {image.get('name')!r}; "
                                   f"this instance runs {spec.image.name!r}")
            self.progress("Installing the disk")
            disk = staging / DISK_FILES[spec.kind][0]
            if spec.kind == "container":
                return self.store.install_disk(spec, disk, start=start,
                                               source_root_uid=manifest.get("root_uid"))
            return self.store.install_disk(spec, disk, start=start, **self.boot)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
