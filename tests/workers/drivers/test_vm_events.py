"""Lifecycle watcher on libvirt's test driver: mapping, host filtering, reconnect + resync."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import libvirt
import pytest

from tests.workers.drivers.vm_fixtures import make_spec
from workers.drivers.base import HostConfig, PowerState
from workers.drivers.vm.driver import VmDriver
from workers.drivers.vm.events import LifecycleWatcher, describe_event, state_after
from workers.drivers.vm.storage import InstanceFiles

URI = "test:///default"


def _host(tmp_path: Path, name: str) -> HostConfig:
    return HostConfig(name=name, state_dir=tmp_path / name, image_dir=tmp_path / "images",
                      bridge="berth0", gateway="10.77.0.1", prefixlen=24, libvirt_uri=URI)


@pytest.fixture
def two_hosts(tmp_path: Path):
    path = tmp_path / "images" / "tiny"
    path.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path / "disk.qcow2"), "64M"],
                   check=True)
    (path / "metadata.json").write_text(json.dumps({
        "name": "tiny", "kind": "vm", "kernel": "vmlinux", "initrd": "initrd.img",
        "disk": "disk.qcow2", "disk_format": "qcow2"}))
    drivers = [VmDriver(_host(tmp_path, "ev")), VmDriver(_host(tmp_path, "ev-other"))]
    yield drivers
    for driver in drivers:
        for status in driver.list_instances():
            driver._remove(status.uuid, InstanceFiles.of(driver.host, status.uuid))
        driver.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, PowerState, str]] = []
        self.cond = threading.Condition()

    def __call__(self, uuid: str, state: PowerState, reason: str) -> None:
        with self.cond:
            self.events.append((uuid, state, reason))
            self.cond.notify_all()

    def wait_for(self, uuid: str, state: PowerState, reason_prefix: str = "") -> None:
        def seen() -> bool:
            return any(u == uuid and s is state and r.startswith(reason_prefix)
                       for u, s, r in self.events)
        with self.cond:
            assert self.cond.wait_for(seen, 5), self.events


def test_event_mapping():
    assert state_after(libvirt.VIR_DOMAIN_EVENT_STOPPED, False) is PowerState.STOPPED
    assert state_after(libvirt.VIR_DOMAIN_EVENT_STARTED, False) is PowerState.RUNNING
    assert state_after(libvirt.VIR_DOMAIN_EVENT_UNDEFINED, False) is PowerState.ABSENT
    assert state_after(libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, False) is None
    assert describe_event(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                          libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) == "stopped: guest powered off"
    assert describe_event(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                          libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == "stopped: destroyed"


def test_watcher_reports_only_this_hosts_domains(two_hosts):
    ours, other = two_hosts
    rec = Recorder()
    watcher = LifecycleWatcher(ours.host, rec)
    watcher.start()
    try:
        mine, theirs = make_spec(ours.host), make_spec(other.host)
        ours.create(mine)
        other.create(theirs)
        rec.wait_for(mine.uuid, PowerState.RUNNING, "resumed")
        ours._lookup(mine.uuid).destroy()  # e.g. `virsh destroy` behind Berth's back
        rec.wait_for(mine.uuid, PowerState.STOPPED, "stopped: destroyed")
        ours.destroy(mine)
        rec.wait_for(mine.uuid, PowerState.ABSENT, "undefined")
        assert all(u != theirs.uuid for u, _, _ in rec.events)
    finally:
        watcher.stop()


def test_watcher_reconnects_and_resyncs_after_the_connection_closes(two_hosts):
    ours, _ = two_hosts
    kept, vanished = make_spec(ours.host), make_spec(ours.host)
    ours.create(kept)
    ours.create(vanished)
    rec = Recorder()
    watcher = LifecycleWatcher(ours.host, rec, reconnect_delay=0.05)
    watcher.start()
    try:
        rec.wait_for(vanished.uuid, PowerState.RUNNING, "resync")
        watcher.stop()  # while the watcher is away (libvirtd restarting)...
        ours.destroy(vanished)  # ...a domain disappears
        ours.stop(kept)  # ...and another stops
        watcher._stopped.clear()
        watcher._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
        assert watcher.connected.wait(5)
        rec.wait_for(vanished.uuid, PowerState.ABSENT, "resync")
        rec.wait_for(kept.uuid, PowerState.STOPPED, "resync")
        assert watcher.reconnects == 1
    finally:
        watcher.stop()
