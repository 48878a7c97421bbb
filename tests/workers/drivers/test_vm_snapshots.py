"""VM snapshots and disk copies on real tiny guests (TCG here): a checkpoint taken while running
brings back the guest's memory and disk, a disk-only one the disk; deleting one and destroying
the VM leave nothing; a disk copied out installs as another VM that reads the same bytes."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess

import pytest

from tests.workers.drivers.vm_fixtures import (
    libvirt_daemons,
    make_spec,
    read_until,
    virtualization,
    vm_bridge,
    vm_driver,
    vm_host,
    vm_tiny_image,
)
from workers.drivers.base import DriverError, PowerState
from workers.drivers.vm.snapshots import VmSnapshots
from workers.drivers.vm.storage import InstanceFiles

_FIXTURES = (libvirt_daemons, virtualization, vm_bridge, vm_driver, vm_host, vm_tiny_image)

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 60.0


async def _shell(driver, spec, *, fresh: bool = False):
    start = driver.console_end(spec.uuid) if fresh else 0
    session = await driver.open_console(spec.uuid, from_offset=start)
    await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    return session


async def _run(session, command: str, marker: str, timeout: float = 20) -> str:
    """Run ``command``; the output between two markers (printed by printf, not echoed)."""
    tag = secrets.token_hex(3)
    await session.write(f"{command}; printf '<%s-{tag}>\\n' {marker}\n".encode())
    out = await read_until(session, f"<{marker}-{tag}>".encode(), timeout)
    return out.decode(errors="replace")


def _disk_text(out: str, tag: str) -> str:
    return out.rsplit(f"{tag}[", 1)[1].split("]", 1)[0]


async def test_checkpoint_restores_memory_and_disk(vm_driver, vm_host):
    store = VmSnapshots(vm_driver)
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await _shell(vm_driver, spec)
    await _run(session, "export MARK=before-snap; echo first > /dev/vda; sync", "w1")

    info = await asyncio.to_thread(store.take, spec, "s1")
    assert info.name == "s1" and info.with_memory and info.size_bytes > 0
    assert [s.name for s in store.list(spec.uuid)] == ["s1"]
    assert (await asyncio.to_thread(store.take, spec, "s1")) == info  # a retry changes nothing

    await _run(session, "export MARK=after-snap; echo second > /dev/vda; sync", "w2")
    await session.close()
    status = await asyncio.to_thread(store.restore, spec, "s1")
    assert status.state is PowerState.RUNNING
    session = await vm_driver.open_console(spec.uuid, from_offset=vm_driver.console_end(spec.uuid))
    await session.write(b"\n")
    out = await _run(session, "echo \"M[$MARK] D[$(head -c 5 /dev/vda)]\"", "r1")
    assert _disk_text(out, "M") == "before-snap"  # the shell's memory came back …
    assert _disk_text(out, "D") == "first"  # … and the disk
    await session.close()

    await asyncio.to_thread(store.delete, spec, "s1")
    await asyncio.to_thread(store.delete, spec, "s1")  # already gone: no error
    assert store.list(spec.uuid) == []
    with pytest.raises(DriverError, match="no snapshot"):
        await asyncio.to_thread(store.restore, spec, "s1")
    await asyncio.to_thread(vm_driver.destroy, spec)
    assert not InstanceFiles.of(vm_host, spec.uuid).dir.exists()


async def test_disk_only_snapshot_of_a_stopped_vm(vm_driver, vm_host):
    store = VmSnapshots(vm_driver)
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await _shell(vm_driver, spec)
    await _run(session, "echo older > /dev/vda; sync", "w1")
    await session.close()
    await asyncio.to_thread(vm_driver.stop, spec, timeout=30)
    info = await asyncio.to_thread(store.take, spec, "cold")
    assert not info.with_memory
    await asyncio.to_thread(vm_driver.start, spec)
    session = await _shell(vm_driver, spec, fresh=True)
    await _run(session, "echo newer > /dev/vda; sync", "w2")
    await session.close()
    status = await asyncio.to_thread(store.restore, spec, "cold")
    assert status.state is PowerState.STOPPED  # a disk-only snapshot comes back stopped
    await asyncio.to_thread(vm_driver.start, spec)
    session = await _shell(vm_driver, spec, fresh=True)
    out = await _run(session, "echo \"D[$(head -c 5 /dev/vda)]\"", "r")
    assert _disk_text(out, "D") == "older"
    await session.close()
    # Destroying the VM removes its snapshots with it (metadata and overlay).
    await asyncio.to_thread(vm_driver.destroy, spec)
    assert store.list(spec.uuid) == []


async def test_disk_copy_installs_as_another_vm(vm_driver, vm_host, tmp_path):
    store = VmSnapshots(vm_driver)
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await _shell(vm_driver, spec)
    await _run(session, "echo copied > /dev/vda; sync", "w1")
    await session.close()
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    disk = await asyncio.to_thread(store.export_disk, spec, out_dir)  # while it runs
    assert vm_driver.status(spec.uuid).state is PowerState.RUNNING
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                                     capture_output=True, check=True).stdout)
    assert info["backing-filename"].endswith("tiny/disk.qcow2")
    assert disk.stat().st_blocks * 512 < 64 << 20  # only what the guest changed

    twin = make_spec(vm_host, address="10.253.7.11")
    status = await asyncio.to_thread(store.install_disk, twin, disk, start=True)
    assert status.state is PowerState.RUNNING
    session = await _shell(vm_driver, twin)
    out = await _run(session, "echo \"D[$(head -c 6 /dev/vda)]\"", "r")
    assert _disk_text(out, "D") == "copied"
    await session.close()
    for s in (spec, twin):
        await asyncio.to_thread(vm_driver.destroy, s)
