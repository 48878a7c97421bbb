"""Per-instance files of a VM: the qcow2 overlay, the config disk and the serial log.

Everything lives in ``<state_dir>/vms/<uuid>/`` so destroying an instance is one rmtree. The
overlay's backing file is the shared image disk, with its format given explicitly (libvirt
refuses to probe backing formats, and probing would be a security hole).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig, InstanceSpec
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.naming import instance_dir

GIB = 1 << 30


@dataclass(frozen=True)
class InstanceFiles:
    dir: Path
    overlay: Path
    config_disk: Path
    serial_log: Path

    @property
    def iso_ejected(self) -> Path:
        """Present once an installer ISO was ejected: later definitions leave the CD-ROM empty."""
        return self.dir / "iso-ejected"

    @classmethod
    def of(cls, host: HostConfig, uuid: str) -> InstanceFiles:
        d = instance_dir(host, uuid)
        return cls(d, d / "disk.qcow2", d / "config.iso", d / "serial.log")


def _run(cmd: list[str], what: str, *, input: bytes | None = None) -> str:
    proc = subprocess.run(cmd, input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise DriverError(f"{what}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


def ensure_traversable(path: Path) -> None:
    """QEMU runs as libvirt-qemu: every directory above its files must be searchable by it."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & 0o001:
            raise DriverError(
                f"{parent} is not searchable by other users (mode {mode & 0o777:o}); QEMU runs as "
                f"libvirt-qemu and could not open the VM's files below it (chmod o+x {parent})"
            )


def make_instance_dir(files: InstanceFiles, *, for_local_qemu: bool = True) -> None:
    files.dir.mkdir(parents=True, exist_ok=True)
    files.dir.chmod(0o711)
    if for_local_qemu:
        ensure_traversable(files.dir)


def create_overlay(files: InstanceFiles, image: VmImage, disk_gib: int) -> None:
    """(Re)create the instance disk: a qcow2 overlay over the image, sized to the plan; for an
    installer ISO an empty qcow2 of the plan's size (the installer fills it)."""
    tmp = files.overlay.with_suffix(".tmp")
    if image.disk is None:
        _run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(disk_gib * GIB)],
             "cannot create the instance disk")
        os.replace(tmp, files.overlay)
        return
    size = max(disk_gib * GIB, virtual_size(image.disk, image.disk_format))
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.disk_format,
          "-b", str(image.disk), str(tmp), str(size)], "cannot create the instance disk")
    os.replace(tmp, files.overlay)


def virtual_size(path: Path, fmt: str) -> int:
    out = _run(["qemu-img", "info", "-U", "--output=json", "-f", fmt, str(path)],
               f"cannot read disk {path}")
    return int(json.loads(out)["virtual-size"])


def grow_overlay(files: InstanceFiles, disk_gib: int) -> bool:
    """Grow a stopped instance's disk; False when it is already that size. Never shrinks."""
    current = virtual_size(files.overlay, "qcow2")
    wanted = disk_gib * GIB
    if wanted < current:
        raise DriverError(f"cannot shrink the disk from {current // GIB} GiB to {disk_gib} GiB")
    if wanted == current:
        return False
    _run(["qemu-img", "resize", "-q", "-f", "qcow2", str(files.overlay), str(wanted)],
         "cannot grow the instance disk")
    return True


def create_config_disk(files: InstanceFiles, spec: InstanceSpec, config_id: str) -> None:
    """Write the ISO the guest init reads secrets from (see workers/images/vm_boot.py).

    ``config_id`` changes when the secrets must be applied again (create, rebuild); the guest
    applies them once per id so a customer's own password change survives reboots.
    """
    with tempfile.TemporaryDirectory(dir=files.dir) as tmp:
        root = Path(tmp)
        (root / "berth-config").write_text("1\n")
        (root / "config-id").write_text(config_id + "\n")
        (root / "hostname").write_text(spec.hostname + "\n")
        if spec.root_password:
            # The panel sends a crypt(3) hash, never the password itself.
            if not spec.root_password.startswith("$"):
                raise DriverError("the root password must arrive as a crypt(3) hash")
            (root / "root-password-hash").write_text(spec.root_password + "\n")
        if spec.ssh_keys:
            (root / "authorized_keys").write_text("".join(k.strip() + "\n" for k in spec.ssh_keys))
        out = files.config_disk.with_suffix(".tmp")
        out.unlink(missing_ok=True)
        _run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "BERTHCFG", "-J", "-r",
              "-o", str(out), str(root)], "cannot create the config disk")
    out.chmod(0o600)
    os.replace(out, files.config_disk)


def remove_instance_dir(files: InstanceFiles) -> None:
    shutil.rmtree(files.dir, ignore_errors=True)
    if files.dir.exists():
        raise DriverError(f"could not remove {files.dir}")
