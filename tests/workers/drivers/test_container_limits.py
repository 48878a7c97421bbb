"""Plan limits, proven by trying to exceed them from inside a container."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from workers.drivers.base import DriverError
from workers.drivers.container.state import ContainerPaths

pytestmark = pytest.mark.root


@pytest.fixture
def small(ct_driver, make_spec):
    spec = make_spec(memory_mib=64, pids_max=32, vcpus=1)
    ct_driver.create(spec)
    yield spec
    ct_driver.destroy(spec)


def _cgroup(driver, spec):
    return driver._cgroup(ContainerPaths.of(driver.host, spec.uuid), spec.uuid)


async def test_the_oom_killer_stops_the_offender_and_the_container_lives(small, ct_driver, attach):
    console = await attach(small.uuid)
    out = await console.run("dd if=/dev/zero of=/dev/null bs=200M count=1; echo rc=$?", timeout=30)
    assert "rc=137" in out  # SIGKILL from the OOM killer
    assert (await console.run("echo $$; echo survived")).split() == ["1", "survived"]
    assert _cgroup(ct_driver, small).stats().oom_kills >= 1


async def test_a_fork_bomb_is_contained(small, ct_driver, attach):
    console = await attach(small.uuid)
    await console.run("bomb() { bomb | bomb & }; bomb")
    cgroup = _cgroup(ct_driver, small)
    deadline = time.monotonic() + 10
    while cgroup.stats().pids_limit_hits == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    usage = cgroup.stats()
    assert usage.pids_limit_hits > 0
    assert usage.pids_current <= small.pids_max
    # a builtin: no fork needed (the bomb's own complaints may interleave)
    assert (await console.run("echo $$")).splitlines()[-1] == "1"


async def test_cpu_quota_holds_two_busy_loops_to_one_cpu(small, ct_driver, attach):
    console = await attach(small.uuid)
    cgroup = _cgroup(ct_driver, small)
    before = cgroup.stats().cpu_seconds
    started = time.monotonic()
    await console.run("for i in 1 2; do timeout 2 sh -c 'while :; do :; done' & done; wait", timeout=20)
    wall = time.monotonic() - started
    used = cgroup.stats().cpu_seconds - before
    assert used <= 1.0 * wall * 1.15  # one vCPU worth, though two cores are free
    assert used >= 1.0  # and it did get its CPU


async def test_the_writable_layer_has_the_plan_size(small, ct_driver, attach):
    console = await attach(small.uuid)
    size_kb = int((await console.run("df -k / | tail -1")).split()[1])
    assert 900_000 < size_kb <= 1 << 20  # 1 GiB less the filesystem's own metadata
    out = await console.run("dd if=/dev/zero of=/root/fill bs=1M count=1100 2>&1; echo rc=$?",
                            timeout=60)
    assert "No space left on device" in out and "rc=1" in out
    assert ct_driver.stats(small.uuid).disk_used_bytes > 900 << 20
    assert (await console.run("rm /root/fill; echo $$")).strip() == "1"  # and it carries on


async def test_a_bigger_disk_applies_at_next_start_and_shrinking_is_refused(small, ct_driver, attach):
    console = await attach(small.uuid)
    await console.run("echo kept > /root/data")
    bigger = replace(small, disk_gib=2)
    await asyncio.to_thread(ct_driver.change_plan, bigger)
    await asyncio.to_thread(ct_driver.stop, bigger, timeout=5)
    await asyncio.to_thread(ct_driver.start, bigger)
    console = await attach(small.uuid)
    assert int((await console.run("df -k / | tail -1")).split()[1]) > 1 << 20
    assert (await console.run("cat /root/data")).strip() == "kept"
    with pytest.raises(DriverError, match="cannot shrink"):
        await asyncio.to_thread(ct_driver.change_plan, small)
