"""VM image builders: deterministic initramfs, module ordering, cached and checksummed builds."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from tests.workers.drivers.vm_fixtures import (
    IMAGE_DIR,
    libvirt_daemons,
    vm_debian_image,
    vm_tiny_image,
)
from workers.images.vm_boot import Cpio, module_load_order
from workers.images.vm_tiny import build_vm_tiny, content_checksum

# pytest finds these fixtures by name in this module's namespace.
_FIXTURES = (libvirt_daemons, vm_debian_image, vm_tiny_image)


def test_cpio_lists_with_busybox_and_is_deterministic(tmp_path: Path):
    def build() -> bytes:
        cpio = Cpio()
        cpio.file("etc/berth/modules", b"virtio\n")
        cpio.symlink("bin/sh", "/bin/busybox")
        cpio.chardev("dev/console", 5, 1)
        return cpio.gzipped()

    assert build() == build()
    archive = tmp_path / "a.cpio"
    archive.write_bytes(gzip.decompress(build()))
    listing = subprocess.run(["busybox", "cpio", "-t", "-F", str(archive)],
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["etc", "etc/berth", "etc/berth/modules", "bin", "bin/sh", "dev/console"]


def test_modules_come_after_their_dependencies(tmp_path: Path):
    for name, deps in {"virtio": "", "virtio_ring": "", "virtio_blk": "virtio,virtio_ring"}.items():
        (tmp_path / f"{name}.ko").write_bytes(b"\x7fELF\x00depends=" + deps.encode() + b"\x00")
    order = [p.name for p in module_load_order(tmp_path, ("virtio_blk",))]
    assert order == ["virtio.ko", "virtio_ring.ko", "virtio_blk.ko"]


@pytest.mark.vm
def test_tiny_build_is_cached_and_checksum_matches(vm_tiny_image):
    messages: list[str] = []
    again = build_vm_tiny(IMAGE_DIR, messages.append)
    assert again == vm_tiny_image
    assert messages == [f"tiny: already built ({vm_tiny_image.checksum[:19]})"]
    meta = json.loads((vm_tiny_image.path / "metadata.json").read_text())
    assert {"vmlinux", "initrd.img", "disk.qcow2"} <= {p.name for p in vm_tiny_image.path.iterdir()}
    # Recomputed after guests used the image (libvirt chowned its disk): still the same.
    assert content_checksum(vm_tiny_image.path)[0] == meta["checksum"] == vm_tiny_image.checksum


@pytest.mark.vm
def test_tiny_build_reports_progress(tmp_path_factory):
    image_dir = Path("/var/tmp/berth-test") / f"build-{tmp_path_factory.getbasetemp().name}"
    image_dir.mkdir(parents=True)
    try:
        # Share the downloaded kernel so the test measures the build, not the mirror.
        (image_dir / ".cache").symlink_to(IMAGE_DIR / ".cache")
        messages: list[str] = []
        built = build_vm_tiny(image_dir, messages.append)
        assert any("initramfs" in m for m in messages) and messages[-1].startswith("tiny: built")
        assert built.size_bytes > 1 << 20 and built.checksum.startswith("sha256:")
    finally:
        subprocess.run(["rm", "-rf", str(image_dir)], check=True)


@pytest.mark.vm
def test_debian_image_has_a_disk_and_metadata(vm_debian_image):
    meta = json.loads((vm_debian_image.path / "metadata.json").read_text())
    assert meta["disk_format"] == "qcow2" and "root=/dev/vda" in meta["cmdline"]
    assert meta["checksum"] == vm_debian_image.checksum
