"""A real libvirtd restart under a running guest: the lifecycle watcher notices the connection
closing, reconnects, reports what changed while it was away (a guest whose QEMU died), and
events flow again; the driver's own connection recovers too.

libvirtd is shared with every other VM test on the machine: it is down for well under a second
here (SIGTERM, then started again at once) and the test waits until it answers again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import libvirt
import pytest

from tests.workers.drivers.test_vm_events import Recorder
from tests.workers.drivers.vm_fixtures import (
    libvirt_daemons,
    make_spec,
    virtualization,
    vm_bridge,
    vm_driver,
    vm_host,
    vm_tiny_image,
)
from workers.drivers.base import PowerState
from workers.drivers.vm.daemons import ensure_daemons
from workers.drivers.vm.events import LifecycleWatcher

_FIXTURES = (libvirt_daemons, virtualization, vm_bridge, vm_driver, vm_host, vm_tiny_image)

pytestmark = pytest.mark.vm


def _pids(comm: str) -> list[int]:
    """Live (not zombie) processes named ``comm``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, _, rest = (entry / "stat").read_text().partition("(")[2].rpartition(")")
            except OSError:
                continue
            if name == comm and rest.split()[0] != "Z":
                found.append(int(entry.name))
    return found


def _gone(pid: int, timeout: float) -> bool:
    """The process exited (a zombie counts: its parent may not be reaping it yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.02)
    return False


def restart_libvirtd(*, while_down=lambda: None) -> float:
    """Stop libvirtd, run ``while_down``, start it again; seconds it was unreachable."""
    (pid,) = _pids("libvirtd")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid, 15), "libvirtd did not exit"
    try:
        while_down()
    finally:
        ensure_daemons(timeout=30)
        conn = libvirt.open("qemu:///system")  # answers again: not just a socket file
        conn.close()
    return time.monotonic() - t0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_watcher_reconnects_and_resyncs_after_libvirtd_restarts(vm_driver, vm_host):
    spec = make_spec(vm_host)
    rec = Recorder()
    watcher = LifecycleWatcher(vm_host, rec, reconnect_delay=0.2, max_reconnect_delay=1.0)
    watcher.start()
    try:
        status = vm_driver.create(spec)
        rec.wait_for(spec.uuid, PowerState.RUNNING, "resumed")
        qemu = status.pid
        assert qemu
        rec.events.clear()

        # While libvirtd is away, the guest's QEMU dies: no event can tell anyone.
        down = restart_libvirtd(while_down=lambda: (os.kill(qemu, signal.SIGKILL),
                                                     _gone(qemu, 10)))
        print(f"\nlibvirtd was down for {down:.2f} s")
        _wait(lambda: watcher.reconnects >= 1 and watcher.connected.is_set(), 30,
              "the watcher did not reconnect")
        # Found out at the resync, or — when libvirtd had not yet noticed the dead QEMU by
        # then — by the STOPPED event it sends when it does, on the new connection.
        rec.wait_for(spec.uuid, PowerState.STOPPED)

        # Events flow on the new connection; the driver reconnected by itself too.
        rec.events.clear()
        vm_driver.start(spec)
        rec.wait_for(spec.uuid, PowerState.RUNNING, "resumed")
        assert vm_driver.status(spec.uuid).state is PowerState.RUNNING
        vm_driver.destroy(spec)
        rec.wait_for(spec.uuid, PowerState.ABSENT, "undefined")
        assert watcher.reconnects == 1
    finally:
        watcher.stop()
