"""Container lifecycle on a real throwaway host: create, console, stop/start, reboot, destroy,
rebuild, change-plan, and survival of the process that created the container."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.workers.conftest import Console, make_host, sweep
from workers.drivers.base import DriverError, ImageSpec, InstanceNotFound, NetworkSpec, PowerState
from workers.drivers.container import ContainerDriver, rootfs
from workers.drivers.container.state import ContainerPaths, ProcRef, root_uid

pytestmark = pytest.mark.root


def _ping(address: str) -> bool:
    return subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", address],
                          capture_output=True).returncode == 0


async def test_console_shows_prompt_and_the_shell_is_pid_1(container, attach):
    console = await attach(container.uuid)
    await console.expect(rf"{container.hostname}:/# ")
    assert (await console.run("hostname")).strip() == container.hostname
    assert (await console.run("echo $$")).strip() == "1"
    assert (await console.run("cat /proc/1/cmdline | tr '\\0' ' '")).strip() == "/bin/sh -l"


async def test_eth0_has_the_ordered_address_mac_and_route(container, attach):
    net = container.network
    console = await attach(container.uuid)
    out = await console.run("ip addr show eth0; ip route")
    assert f"inet {net.address}/{net.prefixlen}" in out
    assert f"link/ether {net.mac}" in out
    assert f"default via {net.gateway} dev eth0" in out
    assert "0% packet loss" in await console.run(f"ping -c 1 -W 2 {net.gateway}")
    assert await asyncio.to_thread(_ping, net.address)


async def test_container_root_is_its_own_unprivileged_host_uid(container, ct_driver, ct_host, attach):
    expected = root_uid(ct_host, container.uid_slot)
    pid = ct_driver.status(container.uuid).pid
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{expected}\t{expected}\t{expected}\t{expected}" in status
    assert f"Gid:\t{expected}\t{expected}\t{expected}\t{expected}" in status
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(expected), "65536"]
    console = await attach(container.uuid)
    assert (await console.run("id -u; touch /root/mine")).strip() == "0"
    created = Path(f"/proc/{pid}/root/root/mine")  # the container's view, from the host
    assert created.stat().st_uid == expected


async def test_graceful_stop_then_start_keeps_the_writable_layer(container, ct_driver, attach, leftovers):
    console = await attach(container.uuid)
    await console.run("echo kept > /root/data; sleep 300 & sleep 1")
    started = time.perf_counter()
    status = await asyncio.to_thread(ct_driver.stop, container, timeout=5)
    elapsed = time.perf_counter() - started
    assert status.state == PowerState.STOPPED
    assert status.detail == "exited with status 0"  # the TERM trap ran: not killed
    assert elapsed < 2.0
    with pytest.raises(AssertionError):
        await console.expect("never printed", timeout=2)
    assert console.ended and console.session.exit_status == 0
    assert set(leftovers(container.uuid)) == {"files"}  # only the state dir is kept

    status = await asyncio.to_thread(ct_driver.start, container)
    assert status.state == PowerState.RUNNING
    console = await attach(container.uuid)
    assert (await console.run("cat /root/data")).strip() == "kept"


async def test_stop_kills_a_container_that_ignores_sigterm(container, ct_driver, attach):
    console = await attach(container.uuid)
    await console.run("trap '' TERM")
    started = time.perf_counter()
    status = await asyncio.to_thread(ct_driver.stop, container, timeout=0.5)
    elapsed = time.perf_counter() - started
    assert status.state == PowerState.STOPPED
    assert status.detail == "killed by signal 9"
    assert 0.5 <= elapsed < 2.5


async def test_reboot_restarts_pid_1_with_the_same_address(container, ct_driver, attach):
    before = ct_driver.status(container.uuid).pid
    console = await attach(container.uuid)
    await console.run("echo again > /root/data")
    status = await asyncio.to_thread(ct_driver.reboot, container, timeout=5)
    assert status.state == PowerState.RUNNING and status.pid != before
    console = await attach(container.uuid)
    assert (await console.run("cat /root/data; echo $$")).split() == ["again", "1"]
    assert f"inet {container.network.address}/" in await console.run("ip addr show eth0")


def test_destroy_leaves_nothing_and_is_idempotent(ct_driver, make_spec, leftovers):
    spec = make_spec()
    ct_driver.create(spec)
    assert leftovers(spec.uuid)["processes"]
    ct_driver.destroy(spec)
    assert leftovers(spec.uuid) == {}
    assert ct_driver.status(spec.uuid).state == PowerState.ABSENT
    ct_driver.destroy(spec)  # already gone: no error
    with pytest.raises(InstanceNotFound):
        ct_driver.stop(spec)


def test_create_converges_when_repeated(ct_driver, make_spec):
    spec = make_spec()
    try:
        first = ct_driver.create(spec)
        assert ct_driver.create(spec).pid == first.pid  # running: nothing to do
        ct_driver.stop(spec, timeout=5)
        assert ct_driver.create(spec).state == PowerState.RUNNING  # stopped: started
    finally:
        ct_driver.destroy(spec)


def test_missing_image_is_refused_without_leftovers(ct_driver, make_spec, leftovers):
    spec = make_spec(image=ImageSpec(name="nope", path="nope"))
    with pytest.raises(DriverError, match="image 'nope' not found"):
        ct_driver.create(spec)
    assert leftovers(spec.uuid) == {}


def test_failing_init_is_reported_without_leftovers(ct_driver, make_spec, leftovers, ct_root):
    image = ct_root / "images" / "broken"
    (image / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)  # no shell in it
    spec = make_spec(image=ImageSpec(name="broken", path=str(image)))
    with pytest.raises(DriverError, match="cannot run /bin/sh"):
        ct_driver.create(spec)
    assert leftovers(spec.uuid) == {}


def test_a_uid_slot_in_use_is_refused(container, ct_driver, make_spec, leftovers):
    spec = make_spec(uid_slot=container.uid_slot)
    with pytest.raises(DriverError, match=f"uid slot {container.uid_slot} is already used"):
        ct_driver.create(spec)
    assert leftovers(spec.uuid) == {}


def test_hosts_sharing_a_kernel_never_see_each_other(ct_driver, make_spec, ct_root, busybox_image,
                                                     shim_binary):
    other = ContainerDriver(make_host(ct_root, busybox_image.path.parent), shim_path=shim_binary)
    other.prepare_host()
    mine = make_spec()
    theirs = make_spec(network=NetworkSpec(
        address=f"{other.host.gateway.rsplit('.', 1)[0]}.10", prefixlen=24,
        gateway=other.host.gateway, mac="02:be:ff:00:00:10", bridge=other.host.bridge),
        uid_slot=mine.uid_slot)  # slots are per host: the same number is fine elsewhere
    try:
        ct_driver.create(mine)
        other.create(theirs)
        assert [s.uuid for s in ct_driver.list_instances()] == [mine.uuid]
        assert [s.uuid for s in other.list_instances()] == [theirs.uuid]
        assert ct_driver.status(theirs.uuid).state == PowerState.ABSENT
        ct_driver.destroy(theirs)  # not ours: nothing happens to it
        assert other.status(theirs.uuid).state == PowerState.RUNNING
    finally:
        ct_driver.destroy(mine)
        sweep(other)


def test_container_survives_the_death_of_its_creator(ct_driver, make_spec):
    """A Celery worker child creates the container and is then SIGKILLed (a worker restart)."""
    spec = make_spec()
    child = os.fork()
    if child == 0:  # pragma: no cover - the stand-in worker
        try:
            ct_driver.create(spec)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, wait_status = os.waitpid(child, 0)
    try:
        assert os.WTERMSIG(wait_status) == signal.SIGKILL
        status = ct_driver.status(spec.uuid)
        assert status.state == PowerState.RUNNING and status.detail == ""

        async def use_console() -> str:
            console = await Console.attach(ct_driver, spec.uuid)
            try:
                return await console.run("echo alive")
            finally:
                await console.close()

        assert asyncio.run(use_console()).strip() == "alive"
    finally:
        ct_driver.destroy(spec)


async def test_a_container_that_exits_by_itself_is_stopped(container, ct_driver, attach, leftovers):
    console = await attach(container.uuid)
    await console.expect("# ")
    await console.session.write(b"exit 3\n")
    with pytest.raises(AssertionError):
        await console.expect("never printed", timeout=2)
    assert console.session.exit_status is not None
    assert os.WEXITSTATUS(console.session.exit_status) == 3
    # the shim removed the cgroups, the kernel the veth; the bridge rules wait for reap(),
    # which the host agent calls when it sees the container stop
    deadline = time.monotonic() + 5
    while set(leftovers(container.uuid)) != {"files", "firewall"} and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert set(leftovers(container.uuid)) == {"files", "firewall"}
    status = await asyncio.to_thread(ct_driver.reap, container.uuid)
    assert (status.state, status.detail) == (PowerState.STOPPED, "exited with status 3")
    assert set(leftovers(container.uuid)) == {"files"}
    paths = ContainerPaths.of(ct_driver.host, container.uuid)
    assert paths.disk.exists() and paths.exit_status.exists()  # data and the reason stay
    assert ct_driver.status(container.uuid).detail == "exited with status 3"
    assert (await asyncio.to_thread(ct_driver.start, container)).state == PowerState.RUNNING


def test_reap_leaves_running_and_busy_containers_alone(container, ct_driver, leftovers):
    import fcntl

    before = ct_driver.status(container.uuid)
    assert ct_driver.reap(container.uuid) == before  # running: nothing to tidy
    assert {"processes", "links", "cgroups", "firewall"} <= set(leftovers(container.uuid))
    paths = ContainerPaths.of(ct_driver.host, container.uuid)
    os.kill(before.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ct_driver.status(container.uuid).state != PowerState.STOPPED and time.monotonic() < deadline:
        time.sleep(0.02)
    fd = os.open(paths.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an operation (say, a start) holds the container
        started = time.monotonic()
        assert ct_driver.reap(container.uuid).state == PowerState.STOPPED
        assert time.monotonic() - started < 1  # it does not wait for the operation
        assert "firewall" in leftovers(container.uuid)  # and leaves the tidying to it
    finally:
        os.close(fd)
    ct_driver.reap(container.uuid)
    assert set(leftovers(container.uuid)) == {"files"}


def test_init_is_in_its_own_cgroup_in_every_hierarchy(container, ct_driver):
    """Seen from the host: PID 1 joins its cgroup-v1 cgroups itself and is born in its cgroup2
    one (launch.c); a hierarchy it missed would leave that controller's limit unenforced."""
    paths = ContainerPaths.of(ct_driver.host, container.uuid)
    init = ProcRef.load(paths.init_pid)
    assert init is not None
    # /proc/<pid>/cgroup: "id:controllers:path", the cgroup2 line is "0::path"
    member = {}
    for line in Path(f"/proc/{init.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for key in controllers.split(",") if controllers else ["unified", "v2"]:
            member[key] = path
    dirs = ct_driver._cgroup(paths, container.uuid).paths()
    assert dirs
    for key, directory in dirs.items():
        assert member[key].endswith(f"/{container.uuid}"), (key, member[key])
        assert str(init.pid) in Path(directory, "cgroup.procs").read_text().split(), key


def test_change_plan_applies_new_limits_live(container, ct_driver):
    bigger = replace(container, memory_mib=256, vcpus=2, pids_max=64)
    assert ct_driver.change_plan(bigger).state == PowerState.RUNNING
    cgroup = ct_driver._cgroup(ContainerPaths.of(ct_driver.host, container.uuid), container.uuid)
    dirs = cgroup.paths()
    if "memory" in dirs:  # cgroup v1
        assert Path(dirs["memory"], "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
        assert Path(dirs["cpu"], "cpu.cfs_quota_us").read_text().strip() == "200000"
        assert Path(dirs["pids"], "pids.max").read_text().strip() == "64"
    else:
        assert Path(dirs["v2"], "memory.max").read_text().strip() == str(256 << 20)
        assert Path(dirs["v2"], "cpu.max").read_text().split() == ["200000", "100000"]
        assert Path(dirs["v2"], "pids.max").read_text().strip() == "64"


async def test_rebuild_gives_a_fresh_layer_and_keeps_the_address(container, ct_driver, attach):
    console = await attach(container.uuid)
    await console.run("echo old > /root/data")
    status = await asyncio.to_thread(ct_driver.rebuild, container)
    assert status.state == PowerState.RUNNING
    console = await attach(container.uuid)
    assert "No such file" in await console.run("cat /root/data 2>&1")
    assert f"inet {container.network.address}/" in await console.run("ip addr show eth0")


async def test_stats_count_cpu_memory_network_and_disk(container, ct_driver, attach):
    console = await attach(container.uuid)
    await console.run(f"ping -c 3 -W 1 {container.network.gateway}; "
                      "dd if=/dev/zero of=/root/blob bs=1M count=20 2>/dev/null; sync")
    stats = await asyncio.to_thread(ct_driver.stats, container.uuid)
    assert stats.cpu_seconds > 0 and stats.memory_bytes > 0
    assert stats.net_tx_bytes >= 3 * 98 and stats.net_rx_bytes >= 3 * 98  # 3 echo requests/replies
    assert stats.disk_used_bytes >= 20 << 20


def test_a_uid_slot_is_free_again_after_destroy(ct_driver, make_spec):
    first = make_spec()
    ct_driver.create(first)
    ct_driver.destroy(first)
    again = make_spec(uid_slot=first.uid_slot)
    try:
        assert ct_driver.create(again).state == PowerState.RUNNING
    finally:
        ct_driver.destroy(again)


def test_host_teardown_keeps_stopped_containers_and_refuses_running_ones(
        ct_root, busybox_image, shim_binary, make_spec):
    driver = ContainerDriver(make_host(ct_root, busybox_image.path.parent), shim_path=shim_binary)
    driver.prepare_host()
    spec = make_spec(network=NetworkSpec(
        address=f"{driver.host.gateway.rsplit('.', 1)[0]}.10", prefixlen=24,
        gateway=driver.host.gateway, mac="02:be:fe:00:00:10", bridge=driver.host.bridge))
    try:
        driver.create(spec)
        with pytest.raises(DriverError, match="still runs 1 container"):
            driver.teardown_host()
        driver.stop(spec, timeout=5)
        driver.teardown_host()  # e.g. `make run` shutting down
        assert not Path("/sys/class/net", driver.host.bridge).exists()
        assert not (driver.host.state_dir / "disk-templates").exists()
        assert [s.state for s in driver.list_instances()] == [PowerState.STOPPED]
        driver.prepare_host()  # the host comes back: so does the container, with its data
        assert driver.start(spec).state == PowerState.RUNNING
    finally:
        sweep(driver)


def test_disks_are_copies_of_a_template_and_never_in_the_host_mount_table(ct_driver, make_spec):
    """A new disk is a sparse copy of the host's empty filesystem for its size (mkfs once per
    size), and a start hands it to PID 1 as a detached mount: nothing of it is ever mounted in
    the host's namespace; the container's root owns the disk's root once it has started."""
    spec = make_spec()
    paths = ContainerPaths.of(ct_driver.host, spec.uuid)
    try:
        ct_driver.create(spec)
        template = ct_driver.host.state_dir / "disk-templates" / f"ext4-{max(spec.disk_gib, 1) << 30}.img"
        assert template.is_file() and template.stat().st_size == paths.disk.stat().st_size
        assert template.stat().st_blocks * 512 < 4 << 20  # sparse: metadata only
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if str(paths.dir) in line]
        ct_driver.stop(spec, timeout=5)
        deadline = time.monotonic() + 10  # the kernel unmounts it as the namespace goes
        while rootfs._in_use(paths.disk) and time.monotonic() < deadline:
            time.sleep(0.05)
        out = subprocess.run(["debugfs", "-R", "stat /", str(paths.disk)], capture_output=True,
                             text=True).stdout
        uid = root_uid(ct_driver.host, spec.uid_slot)
        assert re.search(rf"User:\s+{uid}\s+Group:\s+{uid}\b", out), out
    finally:
        ct_driver.destroy(spec)


def test_a_disk_that_cannot_be_mounted_fails_the_start_and_leaves_it_stopped(ct_driver, make_spec,
                                                                             leftovers):
    spec = make_spec()
    try:
        ct_driver.create(spec)
        ct_driver.stop(spec, timeout=5)
        with open(ContainerPaths.of(ct_driver.host, spec.uuid).disk, "r+b") as disk:
            disk.seek(1024)
            disk.write(b"\0" * 1024)  # the ext4 superblock
        with pytest.raises(DriverError, match="cannot mount the container's disk"):
            ct_driver.start(spec)
        assert ct_driver.status(spec.uuid).state == PowerState.STOPPED
        left = leftovers(spec.uuid)
        assert set(left) == {"files"}, left  # its directory (a stopped container) and no more
    finally:
        ct_driver.destroy(spec)
    assert leftovers(spec.uuid) == {}
