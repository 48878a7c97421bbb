"""Backups, restores and moves of real containers, as a host runs them (``workers/backups.py``):
the archive format, its checksum checked before anything is overwritten, and every failure —
a full target, a truncated or corrupted archive, a full host — leaving the instance whole."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.workers.conftest import make_host, sweep
from workers.backups import FORMAT, ArchiveError, Steps, lease_id
from workers.drivers.base import DriverError, PowerState
from workers.drivers.container import ContainerDriver, network
from workers.drivers.container.state import ContainerPaths, root_uid, veth_name

pytestmark = pytest.mark.root


def steps(driver, seen: list[str] | None = None) -> Steps:
    return Steps(driver, progress=(seen.append if seen is not None else lambda _t: None), boot={})


def backup(driver, spec, target: Path, name: str = "b1", seen=None) -> dict:
    return steps(driver, seen).run("backup", spec, {"step": "backup", "target": str(target), "archive": name}).result


def members(archive: Path) -> list[str]:
    zstd = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-tf", "-"], input=zstd, capture_output=True, check=True).stdout.decode().split()


def manifest(archive: Path) -> dict:
    zstd = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    return json.loads(subprocess.run(["tar", "-xOf", "-", "manifest.json"], input=zstd,
                                     capture_output=True, check=True).stdout)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def target(tmp_path) -> Path:
    return tmp_path / "backups"


async def _shell(attach, spec):
    """A console on the container's current run (a new run's output starts at offset 0)."""
    console = await attach(spec.uuid)
    await console.expect(rf"{spec.hostname}:/# ")
    return console


def test_lease_ids():
    assert lease_id(12) == "12" and lease_id(12, "export") == "12:export"


async def test_backup_archive_and_restore_into_the_same_container(ct_driver, container, attach, target):
    shell = await _shell(attach, container)
    await shell.run("echo kept > /root/data; sync")
    seen: list[str] = []
    result = backup(ct_driver, container, target, seen=seen)
    archive = Path(result["path"])
    assert archive == target / container.uuid / "b1.tar.zst"
    assert result["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result["size_bytes"] == archive.stat().st_size
    check = subprocess.run(["sha256sum", "-c", archive.name + ".sha256"], cwd=archive.parent, capture_output=True)
    assert check.returncode == 0  # the sidecar lets a person check it by hand
    assert members(archive) == ["manifest.json", "disk.img"]
    meta = manifest(archive)
    assert meta["format"] == FORMAT and meta["kind"] == "container" and meta["uuid"] == container.uuid
    assert meta["root_uid"] == root_uid(ct_driver.host, container.uid_slot)
    assert "root_password" not in json.dumps(meta)
    assert any(text.startswith("Archive written") for text in seen)
    assert not list(target.rglob("*.partial")) and not (ct_driver.host.state_dir / "transfer" / "b1").exists()
    assert ct_driver.status(container.uuid).state is PowerState.RUNNING

    await shell.run("echo changed > /root/data; sync")
    status = steps(ct_driver).run("restore_backup", container, {
        "step": "restore_backup", "path": str(archive), "sha256": result["sha256"]}).status
    assert status.state is PowerState.RUNNING  # it ran, so it runs again
    assert (await (await _shell(attach, container)).run("cat /root/data")).strip() == "kept"


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "missing", "no checksum"])
async def test_a_bad_archive_is_refused_before_anything_changes(ct_driver, container, attach, target, damage):
    result = backup(ct_driver, container, target)
    shell = await _shell(attach, container)
    await shell.run("echo current > /root/data; sync")
    archive = Path(result["path"])
    sha = result["sha256"]
    if damage == "truncated":
        with open(archive, "r+b") as f:
            f.truncate(archive.stat().st_size // 2)
    elif damage == "corrupted":
        with open(archive, "r+b") as f:
            f.seek(archive.stat().st_size // 3)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x40]))
    elif damage == "missing":
        archive.unlink()
    else:
        sha = ""
    pid = ct_driver.status(container.uuid).pid
    with pytest.raises(ArchiveError) as refused:
        steps(ct_driver).run("restore_backup", container, {"step": "restore_backup", "path": str(archive), "sha256": sha})
    assert {"truncated": "damaged or incomplete", "corrupted": "damaged or incomplete",
            "missing": "missing", "no checksum": "no checksum"}[damage] in str(refused.value)
    status = ct_driver.status(container.uuid)
    assert status.state is PowerState.RUNNING and status.pid == pid  # not even restarted
    assert (await shell.run("cat /root/data")).strip() == "current"


async def test_a_full_backup_target_fails_cleanly(ct_driver, container, attach, tmp_path):
    shell = await _shell(attach, container)
    await shell.run("head -c 4000000 /dev/urandom > /root/noise; sync")
    with small_tmpfs(tmp_path / "full", "1m") as full:
        with pytest.raises(ArchiveError, match="the backup target is full"):
            backup(ct_driver, container, full)
        assert [p for p in full.rglob("*") if p.is_file()] == []  # no partial archive
    assert not (ct_driver.host.state_dir / "transfer" / "b1").exists()
    assert ct_driver.status(container.uuid).state is PowerState.RUNNING  # thawed, untouched
    assert (await shell.run("echo alive")).strip() == "alive"


async def test_restore_into_a_new_container(ct_driver, container, attach, make_spec, target):
    await (await _shell(attach, container)).run("echo cloned > /root/data; sync")
    result = backup(ct_driver, container, target)
    twin = make_spec()
    try:
        status = steps(ct_driver).run("restore_backup", twin, {
            "step": "restore_backup", "path": result["path"], "sha256": result["sha256"], "start": True}).status
        assert status.state is PowerState.RUNNING
        shell = await _shell(attach, twin)
        assert (await shell.run("cat /root/data; stat -c %u /root/data")).split() == ["cloned", "0"]
    finally:
        ct_driver.destroy(twin)


async def test_restore_refuses_another_image_or_kind(ct_driver, container, make_spec, target):
    result = backup(ct_driver, container, target)
    other = make_spec(uuid=container.uuid)
    from dataclasses import replace

    other = replace(other, image=replace(other.image, name="debian-12"))
    with pytest.raises(DriverError, match="made over image 'busybox'"):
        steps(ct_driver).run("restore_backup", other, {"step": "restore_backup", "path": result["path"],
                                                        "sha256": result["sha256"]})
    assert ct_driver.status(container.uuid).state is PowerState.RUNNING


# --- moving between two hosts ---------------------------------------------------------------

@pytest.fixture
def second_host(ct_root, busybox_image, shim_binary):
    """Another Berth host on this machine: its own name, state dir, bridge, subnet, uid range."""
    driver = ContainerDriver(make_host(ct_root, busybox_image.path.parent), shim_path=shim_binary)
    driver.prepare_host()
    yield driver
    sweep(driver)


def moved_spec(spec, driver, uid_slot: int):
    from dataclasses import replace

    host = driver.host
    return replace(spec, uid_slot=uid_slot, network=replace(
        spec.network, address=f"{host.gateway.rsplit('.', 1)[0]}.20", gateway=host.gateway, bridge=host.bridge))


async def test_move_between_hosts_keeps_the_files(ct_driver, second_host, container, attach, target):
    await (await _shell(attach, container)).run("echo travelled > /root/data; sync")
    exported = await asyncio.to_thread(steps(ct_driver).run, "migrate", container, {
        "step": "export", "target": str(target), "archive": "move-1"})
    assert exported.result["was_running"] is True
    assert exported.status.state is PowerState.STOPPED  # stopped for the copy: a cold move
    there = moved_spec(container, second_host, uid_slot=3)
    imported = steps(second_host).run("migrate", there, {
        "step": "import", "path": exported.result["path"], "sha256": exported.result["sha256"],
        "keep_running": True})
    assert imported.status.state is PowerState.RUNNING
    pid = second_host.status(there.uuid).pid
    data = Path(f"/proc/{pid}/root/root/data")
    assert data.read_text().strip() == "travelled"
    assert data.stat().st_uid == root_uid(second_host.host, 3)  # owners moved into its range
    assert ct_driver.status(container.uuid).state is PowerState.STOPPED  # the source is kept …
    # Driver steps that touch links go through pyroute2's own event loop: not from this one.
    await asyncio.to_thread(steps(ct_driver).run, "migrate", container,
                            {"step": "cleanup", "path": exported.result["path"]})
    assert ct_driver.status(container.uuid).state is PowerState.ABSENT  # … until the cleanup
    assert not Path(exported.result["path"]).exists()
    # Both hosts share this machine: the cleanup left the target's link (same name) alone.
    assert network.link_exists(veth_name(there.uuid))
    assert second_host.status(there.uuid).state is PowerState.RUNNING
    await asyncio.to_thread(second_host.destroy, there)


async def test_a_failed_import_leaves_nothing_on_the_target_and_recovery_restarts_the_source(
        ct_driver, second_host, container, target):
    exported = await asyncio.to_thread(steps(ct_driver).run, "migrate", container, {
        "step": "export", "target": str(target), "archive": "move-2"})
    there = moved_spec(container, second_host, uid_slot=4)
    with pytest.raises(ArchiveError, match="damaged or incomplete"):
        steps(second_host).run("migrate", there, {"step": "import", "path": exported.result["path"],
                                                  "sha256": "0" * 64})
    assert second_host.status(there.uuid).state is PowerState.ABSENT
    assert not ContainerPaths.of(second_host.host, there.uuid).dir.exists()
    status = steps(ct_driver).run("migrate", container, {
        "step": "recover", "path": exported.result["path"], "start": True}).status
    assert status.state is PowerState.RUNNING
    assert not Path(exported.result["path"]).exists()


async def test_a_full_target_host_leaves_nothing_and_the_source_whole(ct_driver, container, attach, target,
                                                                       ct_root, busybox_image, shim_binary):
    await (await _shell(attach, container)).run("head -c 12000000 /dev/urandom > /root/noise; sync")
    exported = await asyncio.to_thread(steps(ct_driver).run, "migrate", container, {
        "step": "export", "target": str(target), "archive": "move-3"})
    host = make_host(ct_root, busybox_image.path.parent)
    with small_tmpfs(host.state_dir, "8m"):
        full = ContainerDriver(host, shim_path=shim_binary)
        await asyncio.to_thread(full.prepare_host)
        try:
            there = moved_spec(container, full, uid_slot=5)
            with pytest.raises(DriverError, match="space"):
                steps(full).run("migrate", there, {"step": "import", "path": exported.result["path"],
                                                   "sha256": exported.result["sha256"]})
            assert full.status(there.uuid).state is PowerState.ABSENT
            assert not list((host.state_dir / "transfer").glob("*"))
        finally:
            await asyncio.to_thread(sweep, full)
    assert ct_driver.status(container.uuid).state is PowerState.STOPPED  # whole on its source
    await asyncio.to_thread(steps(ct_driver).run, "migrate", container,
                            {"step": "recover", "path": exported.result["path"], "start": True})
    assert (await (await _shell(attach, container)).run("wc -c < /root/noise")).strip() == "12000000"
