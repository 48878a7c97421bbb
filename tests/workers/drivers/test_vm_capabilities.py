"""The KVM-or-TCG verdict: cached with its reason, re-checked when the host changes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import libvirt
import pytest

from tests.workers.drivers.vm_fixtures import libvirt_daemons, vm_tiny_image
from workers.drivers.vm.capabilities import (
    Virtualization,
    _fingerprint,
    detect_virtualization,
    load_verdict,
)
from workers.drivers.vm.image import VmImage

URI = "test:///default"

_FIXTURES = (libvirt_daemons, vm_tiny_image)  # found by name in this module


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


def _domain_exists(name: str) -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name],
                          capture_output=True).returncode == 0


@pytest.mark.vm
def test_a_process_killed_mid_probe_leaves_no_probe_domain(vm_tiny_image, tmp_path: Path):
    """A stopped agent or a Ctrl-C of make run may end the process while it probes KVM; the
    probe's domain must go with its connection (it once stayed, paused, on this machine)."""
    name = f"berth-t{secrets.token_hex(3)}-kvm-probe"
    code = ("import sys; from pathlib import Path; import libvirt; "
            "from workers.drivers.vm.capabilities import probe_kvm; "
            "from workers.drivers.vm.image import VmImage; "
            "conn = libvirt.open('qemu:///system'); "
            f"probe_kvm(conn, VmImage.load(Path({str(vm_tiny_image.path)!r})), Path({str(tmp_path)!r}), "
            f"name={name!r}, timeout=120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3])
    try:
        deadline = time.monotonic() + 30
        while not _domain_exists(name) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None and not _domain_exists(name):
            pytest.skip("KVM works here: the probe ended before it could be interrupted")
        assert _domain_exists(name), "the probe never defined its domain"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _domain_exists(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _domain_exists(name), "the probe's domain outlived the killed process"
    finally:
        proc.kill()
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
