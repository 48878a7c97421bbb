"""The ``tiny`` VM image: Debian's kernel + a busybox initramfs, at a shell prompt in ~3 s (TCG).

Used for fast integration tests, the KVM capability check and as the smallest VM plan. The
guest boots to a root shell on ttyS0 (no login), takes its address, gateway and hostname from
the kernel command line, and handles the ACPI power button (busybox acpid → poweroff). A root
password hash and SSH keys from the config disk are written to /etc/shadow and
/root/.ssh/authorized_keys, but the tiny guest runs no sshd and no login: they are recorded only.
The disk is an empty 64 MiB qcow2 that instances get a copy-on-write overlay of.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from workers.images.base import BuiltImage, Progress
from workers.images.vm_boot import build_initramfs, fetch_kernel, run, write_metadata

NAME = "tiny"
BUILDER_VERSION = 3  # bump when the image's content changes, so cached copies are rebuilt
CMDLINE = "console=ttyS0 panic=-1 quiet"


def load_built(path: Path, builder_version: int) -> BuiltImage | None:
    """The finished image at ``path`` if its metadata is there and current, else None."""
    try:
        meta = json.loads((path / "metadata.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    if meta.get("builder_version") != builder_version:
        return None
    return BuiltImage(meta["name"], path, int(meta["size_bytes"]), meta["checksum"])


def content_checksum(path: Path) -> tuple[str, int]:
    """("sha256:<hex>", bytes) over the image's file names and contents, metadata.json aside.

    Owners are left out on purpose (unlike container trees): libvirt chowns a backing disk to
    its QEMU user while guests use it, which must not make the image look different.
    """
    digest = hashlib.sha256()
    size = 0
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name != "metadata.json"):
        file_digest = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{file.name}\0{file_digest.hexdigest()}\n".encode())
        size += file.stat().st_size
    return "sha256:" + digest.hexdigest(), size


def finish_image(work: Path, dest: Path, metadata: dict[str, object]) -> BuiltImage:
    """Checksum the built files, write metadata.json, and move the image into place."""
    metadata["checksum"], metadata["size_bytes"] = content_checksum(work)
    write_metadata(work, metadata)
    shutil.rmtree(dest, ignore_errors=True)
    work.replace(dest)
    dest.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the kernel and disk
    return BuiltImage(str(metadata["name"]), dest, int(str(metadata["size_bytes"])),
                      str(metadata["checksum"]))


def build_vm_tiny(image_dir: Path, progress: Progress) -> BuiltImage:
    """Build ``<image_dir>/tiny`` unless a current copy is already there (then a no-op)."""
    dest = image_dir / NAME
    built = load_built(dest, BUILDER_VERSION)
    if built is not None:
        progress(f"{NAME}: already built ({built.checksum[:19]})")
        return built
    image_dir.mkdir(parents=True, exist_ok=True)
    kernel = fetch_kernel(image_dir / ".cache", progress)
    work = image_dir / f".{NAME}.build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        progress(f"{NAME}: copying kernel {kernel.version}")
        shutil.copyfile(kernel.vmlinux, work / "vmlinux")
        progress(f"{NAME}: building the busybox initramfs")
        build_initramfs(work / "initrd.img", kernel, tiny_userland=True)
        progress(f"{NAME}: creating the 64 MiB base disk")
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "disk.qcow2"), "64M"])
        progress(f"{NAME}: checksumming")
        built = finish_image(work, dest, {
            "name": NAME,
            "builder_version": BUILDER_VERSION,
            "kind": "vm",
            "kernel": "vmlinux",
            "initrd": "initrd.img",
            "disk": "disk.qcow2",
            "disk_format": "qcow2",
            "cmdline": CMDLINE,
            "kernel_version": kernel.version,
            "login": "root shell on ttyS0, no password",
            "prompt": "# ",
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{NAME}: built, {built.size_bytes // 1024} KiB, {built.checksum[:19]}")
    return built
