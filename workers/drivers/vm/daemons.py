"""Keep libvirt's daemons running on hosts without systemd, and /dev/kvm usable by QEMU.

``python -m workers.drivers.vm.daemons ensure`` is what ``make run`` and ``make test`` call;
the VM driver's ``prepare_host()`` does the same. Idempotent: it only starts what is missing.
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import time
from pathlib import Path

from workers.drivers.base import DriverError

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
KVM_DEVICE = Path("/dev/kvm")


def _running(comm: str) -> bool:
    """Is a process named ``comm`` running (any user)? Reads /proc, needs no procps.

    A zombie does not count: a daemon that just exited stays one until PID 1 reaps it, and
    taking it for a live daemon would leave libvirt down after a restart.
    """
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition("(")[2].rpartition(")")
            if name == comm and rest.split()[0] != "Z":
                return True
    return False


def fix_kvm_permissions() -> str | None:
    """Give /dev/kvm to group kvm, mode 0660, as udev would.

    Without it libvirt finds KVM "not available now" for its QEMU user and re-probes QEMU's
    capabilities on every define (30-40 s each). Returns what was changed, if anything.
    """
    if not KVM_DEVICE.exists():
        return None
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    st = KVM_DEVICE.stat()
    if st.st_gid == kvm_gid and st.st_mode & 0o777 == 0o660:
        return None
    os.chown(KVM_DEVICE, -1, kvm_gid)
    KVM_DEVICE.chmod(0o660)
    return "set /dev/kvm to group kvm, mode 0660"


def _start(binary: str) -> None:
    proc = subprocess.run([binary, "-d"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DriverError(f"cannot start {binary}: {proc.stderr.strip() or proc.returncode}")


def _wait_for_socket(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if LIBVIRT_SOCKET.is_socket():
            return
        time.sleep(0.05)
    raise DriverError(f"libvirtd started but {LIBVIRT_SOCKET} did not appear within {timeout:.0f} s")


def ensure_daemons(*, timeout: float = 10.0) -> list[str]:
    """Make sure virtlogd and libvirtd run and /dev/kvm is usable; return the actions taken."""
    actions = []
    fixed = fix_kvm_permissions()
    if fixed:
        actions.append(fixed)
    # virtlogd first: domains with a <log> on their serial port cannot start without it.
    if not _running("virtlogd"):
        _start("/usr/sbin/virtlogd")
        actions.append("started virtlogd")
    if not _running("libvirtd"):
        _start("/usr/sbin/libvirtd")
        actions.append("started libvirtd")
    _wait_for_socket(timeout)
    return actions


def main(argv: list[str]) -> int:
    if argv != ["ensure"]:
        print("usage: python -m workers.drivers.vm.daemons ensure", file=sys.stderr)
        return 2
    try:
        actions = ensure_daemons()
    except DriverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("; ".join(actions) if actions else "libvirt daemons already running")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
