"""Snapshots of a VM, and the consistent copies of its disk that backups and moves between
hosts archive (``workers/backups.py``).

Snapshots are libvirt **internal** snapshots of the qcow2 overlay. Taken from a running guest
they are full checkpoints: QEMU pauses the guest, saves its memory and device state into the
overlay beside the disk's snapshot, and resumes it, so restoring one brings the guest back
running at that instant, page cache and open files included, with no guest agent needed (our
guests have none to freeze their filesystems). Taken from a stopped guest they hold the disk
only. Internal rather than external: the overlay stays one file (nothing to chain, merge or
carry along), and libvirt 9.0 (Debian 12) can revert only internal snapshots — reverting to an
external one came in 9.9. The price: a running guest's snapshot stores its memory (about the
memory it has touched), and the guest is paused while it is written.

Sizes: libvirt does not say what a snapshot takes, so the growth of the overlay's allocated
bytes while it was taken is recorded in the snapshot's description and shown.

A disk copy (``export_disk``) is the overlay's current state, without its snapshots, as a
qcow2 over the same image (``qemu-img convert -B``: only the clusters the guest changed), made
while the guest is paused (pausing flushes QEMU's caches), plus the config disk (the guest
applies its secrets once per config id, so a moved guest keeps a password its owner changed).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from workers.drivers.base import DriverError, InstanceSpec, InstanceStatus, SnapshotInfo
from workers.drivers.vm.connection import describe, libvirt_errors
from workers.drivers.vm.driver import BeforeResume, VmDriver
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.storage import (
    InstanceFiles,
    create_config_disk,
    grow_overlay,
    make_instance_dir,
)

DISK = "disk.qcow2"
CONFIG = "config.iso"
STOP_TIMEOUT = 10.0


def check_name(name: str) -> str:
    from workers.drivers.container.snapshots import check_name as check  # noqa: PLC0415

    return check(name)


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        if "No space left" in detail:
            raise DriverError(f"{what}: not enough space on the host ({detail})")
        raise DriverError(f"{what}: {detail}")


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


class VmSnapshots:
    """Snapshots and disk copies of one host's VMs (a ``DiskStore``)."""

    def __init__(self, driver: VmDriver) -> None:
        self.driver = driver
        self.host = driver.host

    # -- snapshots ---------------------------------------------------------------------------

    def take(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        check_name(name)
        dom = self.driver._require(spec.uuid)
        found = self._lookup(dom, name)
        if found is not None:  # taken already (a retried operation)
            return _info(found)
        files = InstanceFiles.of(self.host, spec.uuid)
        running = bool(dom.isActive())
        before = _allocated(files.overlay)
        taken_at = time.time()
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "memory", snapshot="internal" if running else "no")
        disks = ET.SubElement(root, "disks")
        ET.SubElement(disks, "disk", name="vda", snapshot="internal")
        ET.SubElement(disks, "disk", name="vdb", snapshot="no")  # the read-only config disk
        with libvirt_errors(f"cannot snapshot {dom.name()}"):
            snap = dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"),
                                         libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
            size = max(_allocated(files.overlay) - before, 0)
            # Remember what it took (libvirt cannot tell later): in its description.
            xml = ET.fromstring(snap.getXMLDesc(0))
            description = xml.find("description")
            if description is None:
                description = ET.SubElement(xml, "description")
            description.text = json.dumps({"size_bytes": size, "created_at": taken_at})
            snap = dom.snapshotCreateXML(ET.tostring(xml, encoding="unicode"),
                                         libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
        return _info(snap)

    def restore(self, spec: InstanceSpec, name: str, *,
                before_resume: BeforeResume | None = None) -> InstanceStatus:
        """Revert to the snapshot: a checkpoint comes back running where it was, a disk-only
        snapshot stopped."""
        check_name(name)
        dom = self.driver._require(spec.uuid)
        snap = self._lookup(dom, name)
        if snap is None:
            raise DriverError(f"instance {spec.uuid} has no snapshot {name!r} on {self.host.name}")
        memory = _info(snap).with_memory
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE
        if memory:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED  # resumed once the console is attached
        with libvirt_errors(f"cannot restore snapshot {name} of {dom.name()}"):
            dom.revertToSnapshot(snap, flags)
        if memory:
            try:
                if before_resume is not None:
                    before_resume()
            finally:
                with libvirt_errors(f"cannot resume {dom.name()}"):
                    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                        dom.resume()
        return self.driver.status(spec.uuid)

    def delete(self, spec: InstanceSpec, name: str) -> None:
        check_name(name)
        dom = self.driver._lookup(spec.uuid)
        if dom is None:
            return
        snap = self._lookup(dom, name)
        if snap is None:
            return
        with libvirt_errors(f"cannot delete snapshot {name} of {dom.name()}"):
            snap.delete(0)

    def list(self, uuid: str) -> list[SnapshotInfo]:
        dom = self.driver._lookup(uuid)
        if dom is None:
            return []
        with libvirt_errors("cannot list snapshots"):
            found = [_info(s) for s in dom.listAllSnapshots(0)]
        return sorted(found, key=lambda s: s.created_at)

    def forget_all(self, dom: libvirt.virDomain) -> None:
        """Drop the snapshot records of a domain whose overlay is being replaced (their data
        goes with the old overlay)."""
        with libvirt_errors(f"cannot drop the snapshots of {dom.name()}"):
            for snap in dom.listAllSnapshots(0):
                with contextlib.suppress(libvirt.libvirtError):  # a child went with its parent
                    snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)

    @staticmethod
    def _lookup(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
        try:
            return dom.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return None
            raise DriverError(f"cannot look up snapshot {name}: {describe(err)}") from err

    # -- disk copies (backups, moves) --------------------------------------------------------

    def export_disk(self, spec: InstanceSpec, dest_dir: Path) -> Path:
        dom = self.driver._require(spec.uuid)
        files = InstanceFiles.of(self.host, spec.uuid)
        image = VmImage.for_spec(self.host, spec.image)
        dest = dest_dir / DISK
        paused = False
        if dom.isActive() and dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            with libvirt_errors(f"cannot pause {dom.name()}"):
                dom.suspend()  # QEMU drains and flushes the disk before it reports paused
            paused = True
        try:
            backing = ([] if image.disk is None  # an installer ISO's VM: a standalone disk
                       else ["-F", image.disk_format, "-B", str(image.disk)])
            _run(["qemu-img", "convert", "-U", "-q", "-f", "qcow2", "-O", "qcow2", *backing,
                  str(files.overlay), str(dest)], "cannot copy the VM's disk")
        except DriverError:
            dest.unlink(missing_ok=True)
            raise
        finally:
            if paused:
                with libvirt_errors(f"cannot resume {dom.name()}"):
                    dom.resume()
        if files.config_disk.exists():
            (dest_dir / CONFIG).write_bytes(files.config_disk.read_bytes())
            (dest_dir / CONFIG).chmod(0o600)
        return dest

    def install_disk(self, spec: InstanceSpec, disk: Path, *, start: bool,
                     before_resume: BeforeResume | None = None) -> InstanceStatus:
        """The config disk beside ``disk`` (from ``export_disk``) is kept when there is one;
        without it a new one is written (the guest applies its secrets afresh)."""
        image = VmImage.for_spec(self.host, spec.image)  # refuses another build of the image
        if image.disk is not None:  # an installer ISO's VM has a standalone disk
            _run(["qemu-img", "rebase", "-u", "-q", "-f", "qcow2", "-F", image.disk_format,
                  "-b", str(image.disk), str(disk)], "cannot attach the disk to this host's image")
        files = InstanceFiles.of(self.host, spec.uuid)
        config = disk.with_name(CONFIG)
        dom = self.driver._lookup(spec.uuid)
        new = dom is None
        was_running = False
        try:
            make_instance_dir(files, for_local_qemu=self.driver.uri.startswith("qemu:///"))
            if not new:
                was_running = bool(dom.isActive())
                self.driver.stop(spec, timeout=STOP_TIMEOUT)
                self.forget_all(dom)
            os.replace(disk, files.overlay)
            os.chmod(files.overlay, 0o600)
            grow_overlay(files, spec.disk_gib)
            if config.exists():
                os.replace(config, files.config_disk)
            elif not image.is_installer and (new or not files.config_disk.exists()):
                create_config_disk(files, spec, config_id=f"{spec.uuid}-{secrets.token_hex(4)}")
            dom = self.driver._define(spec, image, files)
            if start or was_running:
                self.driver._boot(dom, before_resume)
        except BaseException:
            if new:  # nothing half-made stays behind
                with contextlib.suppress(DriverError):
                    self.driver._remove(spec.uuid, files)
            raise
        status = self.driver.status(spec.uuid)
        return InstanceStatus(status.uuid, status.state, status.pid, status.detail)


def _info(snap: libvirt.virDomainSnapshot) -> SnapshotInfo:
    xml = ET.fromstring(snap.getXMLDesc(0))
    try:
        meta = json.loads(xml.findtext("description") or "{}")
    except ValueError:
        meta = {}
    state = xml.findtext("state") or ""
    return SnapshotInfo(
        name=xml.findtext("name") or snap.getName(),
        size_bytes=int(meta.get("size_bytes", 0)),
        with_memory=state in ("running", "paused"),
        created_at=float(meta.get("created_at") or xml.findtext("creationTime") or 0),
    )

