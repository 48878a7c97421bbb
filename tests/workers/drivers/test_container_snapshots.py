"""Container snapshots and disk copies on a real throwaway host: a snapshot taken while a
process writes is a clean filesystem, restoring one rolls the files back (and the container
runs again), a copy installed for another uid range belongs to that range's root, and
destroying the container removes its snapshots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from workers.drivers.base import DriverError, PowerState
from workers.drivers.container.snapshots import SNAPSHOTS, ContainerSnapshots, _is_frozen
from workers.drivers.container.state import ContainerPaths, root_uid

pytestmark = pytest.mark.root


@pytest.fixture
def store(ct_driver):
    return ContainerSnapshots(ct_driver)


async def test_snapshot_and_restore_a_running_container(ct_driver, store, container, attach):
    console = await attach(container.uuid)
    await console.expect(rf"{container.hostname}:/# ")
    await console.run("echo one > /root/note; sync")
    info = store.take(container, "s1")
    assert info.name == "s1" and info.size_bytes > 0 and not info.with_memory
    assert store.take(container, "s1") == info  # a retry changes nothing
    cgroup = ct_driver._stored_cgroup(ContainerPaths.of(ct_driver.host, container.uuid))
    assert not _is_frozen(cgroup)  # thawed again
    assert (await console.run("cat /root/note")).strip() == "one"  # and it still answers

    await console.run("echo two > /root/note; touch /root/later")
    status = store.restore(container, "s1")
    assert status.state is PowerState.RUNNING
    console = await attach(container.uuid)
    await console.expect(rf"{container.hostname}:/# ")
    assert (await console.run("cat /root/note; ls /root")).split() == ["one", "note"]
    assert [s.name for s in store.list(container.uuid)] == ["s1"]

    store.delete(container, "s1")
    store.delete(container, "s1")  # already gone: no error
    assert store.list(container.uuid) == []
    with pytest.raises(DriverError, match="no snapshot"):
        store.restore(container, "s1")


async def test_snapshot_while_writing_is_a_clean_filesystem(ct_driver, store, container, attach, tmp_path):
    console = await attach(container.uuid)
    await console.expect(rf"{container.hostname}:/# ")
    # A writer appending numbered lines as fast as it can, in the background.
    await console.run("(i=0; while :; do echo $i >> /root/log; i=$((i+1)); done) & echo started")
    await console.run("sleep 0.3")
    store.take(container, "busy")
    await console.run("kill %1")
    copy = tmp_path / "disk.img"
    shutil.copyfile(ContainerPaths.of(ct_driver.host, container.uuid).dir / SNAPSHOTS / "busy" / "disk.img", copy)
    first = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert first.returncode in (0, 1), first.stdout  # at most the journal's last commit replayed
    second = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True)
    assert second.returncode == 0, second.stdout  # … and then nothing at all to repair
    lines = subprocess.run(["debugfs", "-R", "cat /upper/root/log", str(copy)],
                           capture_output=True, text=True).stdout.split()
    assert len(lines) > 10
    assert lines == [str(i) for i in range(len(lines))]  # a prefix of what was written, whole


async def test_snapshot_of_a_stopped_container_and_destroy_removes_them(ct_driver, store, make_spec):
    spec = make_spec()
    ct_driver.create(spec)
    ct_driver.stop(spec)
    store.take(spec, "cold")
    folder = ContainerPaths.of(ct_driver.host, spec.uuid).dir / SNAPSHOTS / "cold"
    assert (folder / "disk.img").exists()
    ct_driver.destroy(spec)
    assert not folder.exists() and store.list(spec.uuid) == []


async def test_disk_copy_installs_for_another_uid_range(ct_driver, store, container, attach, make_spec, tmp_path):
    console = await attach(container.uuid)
    await console.expect(rf"{container.hostname}:/# ")
    await console.run("echo moved > /root/file; mkdir /home/u; chown 1000:1000 /home/u; sync")
    out = tmp_path / "export"
    out.mkdir()
    disk = store.export_disk(container, out)
    assert ct_driver.status(container.uuid).state is PowerState.RUNNING

    twin = make_spec()
    assert twin.uid_slot != container.uid_slot
    status = store.install_disk(twin, disk, start=True,
                                source_root_uid=root_uid(ct_driver.host, container.uid_slot))
    try:
        assert status.state is PowerState.RUNNING
        console = await attach(twin.uuid)
        await console.expect(rf"{twin.hostname}:/# ")
        assert (await console.run("cat /root/file")).strip() == "moved"
        # Owners are the twin's own ids: its root, and its uid 1000.
        assert (await console.run("stat -c '%u %g' /root/file /home/u")).split() == ["0", "0", "1000", "1000"]
        pid = ct_driver.status(twin.uuid).pid
        assert Path(f"/proc/{pid}/root/root/file").stat().st_uid == root_uid(ct_driver.host, twin.uid_slot)
    finally:
        ct_driver.destroy(twin)


async def test_install_refused_for_a_taken_uid_slot_leaves_nothing(ct_driver, store, container, make_spec, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    disk = store.export_disk(container, out)
    clash = make_spec(uid_slot=container.uid_slot)
    with pytest.raises(DriverError, match="uid slot"):
        store.install_disk(clash, disk, start=True)
    assert not ContainerPaths.of(ct_driver.host, clash.uuid).dir.exists()
    assert disk.exists()  # the caller's copy is untouched
