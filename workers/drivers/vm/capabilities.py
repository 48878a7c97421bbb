"""Decide whether this host's VMs run under KVM or TCG, by booting a guest — and say why.

``/dev/kvm`` existing proves nothing: on nested PVM hosts it hangs a stock kernel for minutes
before failing. So the check boots the tiny image under ``<domain type='kvm'>`` with
``berth.probe=1`` (its init prints a marker and powers off at once) and waits a few seconds.
The verdict is cached in the host's state dir with its reason, and re-checked when the host's
kernel or QEMU changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import libvirt

from workers.drivers.base import DriverError
from workers.drivers.vm.connection import describe, open_connection
from workers.drivers.vm.image import VmImage

PROBE_MARKER = b"BERTH-PROBE-OK"


@dataclass(frozen=True)
class Virtualization:
    domain_type: str  # "kvm" | "qemu" (TCG) | "test" (libvirt's test driver)
    reason: str  # shown to the admin
    checked_at: float = 0.0  # unix time of the check
    check_seconds: float = 0.0  # how long the check took
    fingerprint: str = ""  # host kernel + QEMU version the verdict holds for

    @property
    def accelerated(self) -> bool:
        return self.domain_type == "kvm"


def _fingerprint(conn: libvirt.virConnect) -> str:
    return f"kernel {os.uname().release}, qemu {conn.getVersion()}, libvirt {conn.getLibVersion()}"


def _probe_xml(name: str, image: VmImage, log: Path) -> str:
    dom = ET.Element("domain", type="kvm")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "128"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(image.kernel)
    ET.SubElement(os_el, "initrd").text = str(image.initrd)
    ET.SubElement(os_el, "cmdline").text = "console=ttyS0 panic=-1 quiet berth.probe=1"
    # Without ACPI "poweroff -f" only halts the CPU and the probe domain would never stop.
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(log), append="off")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def _destroy_stale(conn: libvirt.virConnect, name: str) -> None:
    """A probe domain left by an older Berth (before AUTODESTROY) is not a verdict: remove it."""
    with contextlib.suppress(libvirt.libvirtError):
        conn.lookupByName(name).destroy()


def probe_kvm(conn: libvirt.virConnect, image: VmImage, work_dir: Path, *,
              name: str, timeout: float) -> tuple[bool, str]:
    """Boot the probe guest under KVM; (works, why)."""
    if not Path("/dev/kvm").exists():
        return False, "/dev/kvm does not exist (no KVM module, or not exposed to this host)"
    log = work_dir / "kvm-probe.log"
    log.unlink(missing_ok=True)
    started = time.monotonic()
    _destroy_stale(conn, name)
    try:
        # AUTODESTROY: libvirtd kills the probe when this connection closes, so a process
        # killed mid-probe (a stopped agent, a Ctrl-C of make run) never leaves it behind.
        dom = conn.createXML(_probe_xml(name, image, log), libvirt.VIR_DOMAIN_START_AUTODESTROY)
    except libvirt.libvirtError as err:
        return False, f"libvirt cannot start a KVM guest: {describe(err)}"
    try:
        while time.monotonic() - started < timeout:
            try:
                if not dom.isActive():
                    break
            except libvirt.libvirtError:
                break  # transient domain gone: it powered itself off
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        output = log.read_bytes() if log.exists() else b""
        if PROBE_MARKER in output:
            return True, f"a KVM guest booted to userspace in {elapsed:.1f} s"
        tail = output[-200:].decode(errors="replace").strip()
        if elapsed >= timeout:
            return False, (f"a KVM guest did not reach userspace within {timeout:.0f} s "
                           f"(/dev/kvm is present but does not run a stock kernel)"
                           + (f"; last console output: {tail!r}" if tail else ""))
        return False, "a KVM guest stopped before reaching userspace" + (
            f"; last console output: {tail!r}" if tail else "")
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        log.unlink(missing_ok=True)


def detect_virtualization(uri: str, image: VmImage, cache_file: Path, *,
                          timeout: float = 15.0, force: bool = False,
                          probe_name: str = "berth-kvm-probe") -> Virtualization:
    """The cached verdict when it still holds for this host, else boot the probe and cache it."""
    conn = open_connection(uri)
    try:
        fingerprint = _fingerprint(conn)
        if not force:
            cached = load_verdict(cache_file)
            if cached is not None and cached.fingerprint == fingerprint:
                return cached
        started = time.monotonic()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        works, why = probe_kvm(conn, image, cache_file.parent, name=probe_name, timeout=timeout)
        took = time.monotonic() - started
        verdict = Virtualization(
            domain_type="kvm" if works else "qemu",
            reason=f"KVM: {why}" if works else f"TCG (software emulation): {why}",
            checked_at=time.time(),
            check_seconds=round(took, 2),
            fingerprint=fingerprint,
        )
    finally:
        conn.close()
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(verdict), indent=2) + "\n")
    os.replace(tmp, cache_file)
    return verdict


def load_verdict(cache_file: Path) -> Virtualization | None:
    try:
        return Virtualization(**json.loads(cache_file.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise DriverError(f"unreadable virtualization verdict {cache_file}: {exc}") from exc
