"""The KVM-or-TCG verdict: cached with its reason, re-checked when the host changes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import libvirt

from workers.drivers.vm.capabilities import (
    Virtualization,
    _fingerprint,
    detect_virtualization,
    load_verdict,
)
from workers.drivers.vm.image import VmImage

URI = "test:///default"


def _image(tmp_path: Path) -> VmImage:
    (tmp_path / "metadata.json").write_text(json.dumps({
        "name": "tiny", "kind": "vm", "kernel": "vmlinux", "initrd": "initrd.img",
        "disk": "disk.qcow2", "disk_format": "qcow2"}))
    return VmImage.load(tmp_path)


def test_cached_verdict_is_reused_while_the_host_is_unchanged(tmp_path: Path):
    conn = libvirt.open(URI)
    cached = Virtualization("kvm", "KVM: a KVM guest booted to userspace in 0.4 s", 1.0, 0.5,
                            _fingerprint(conn))
    conn.close()
    cache = tmp_path / "virtualization.json"
    cache.write_text(json.dumps(asdict(cached)))
    assert detect_virtualization(URI, _image(tmp_path), cache) == cached


def test_changed_host_is_probed_again_and_the_reason_recorded(tmp_path: Path):
    cache = tmp_path / "virtualization.json"
    cache.write_text(json.dumps(asdict(Virtualization("kvm", "old", 1.0, 0.5, "other host"))))
    verdict = detect_virtualization(URI, _image(tmp_path), cache, timeout=1)
    # The test driver cannot boot a KVM guest: the verdict says TCG and why.
    assert verdict.domain_type == "qemu"
    assert verdict.reason.startswith("TCG (software emulation): ")
    assert load_verdict(cache) == verdict
