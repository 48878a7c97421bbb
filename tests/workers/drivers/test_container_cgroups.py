"""The cgroup layer without root: layout detection from /proc texts, and both backends writing
into a fake cgroupfs directory (the v2 path cannot run for real on these v1 machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.drivers.base import DriverError
from workers.drivers.container import cgroups
from workers.drivers.container.cgroups import CgroupLayout, CgroupV1, CgroupV2, Limits, from_paths

V1_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
36 30 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""
V1_PROC = """\
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""
V2_MOUNTINFO = "25 1 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
LIMITS = Limits(memory_bytes=64 << 20, vcpus=1.5, pids_max=100)


def test_v1_layout_uses_our_own_cgroup_in_each_hierarchy():
    layout = CgroupLayout.detect(V1_MOUNTINFO, V1_PROC)
    assert layout.version == 1
    assert layout.bases["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc")
    assert layout.bases["cpu"] == Path("/sys/fs/cgroup/cpu")
    assert layout.bases["unified"] == Path("/sys/fs/cgroup/unified")
    group = layout.group("berth-x/u1")
    assert isinstance(group, CgroupV1)
    assert group.dirs["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc/berth-x/u1")


def test_comounted_v1_controllers_share_a_hierarchy():
    mountinfo = "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n" \
        "33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    layout = CgroupLayout.detect(mountinfo, "3:cpu,cpuacct:/a\n2:memory:/b\n")
    assert layout.bases["cpu"] == layout.bases["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct/a")


def test_v2_layout_and_override():
    layout = CgroupLayout.detect(V2_MOUNTINFO, "0::/system.slice/berth.service\n")
    assert (layout.version, layout.bases) == (2, {"v2": Path("/sys/fs/cgroup/system.slice/berth.service")})
    pinned = CgroupLayout.detect(V2_MOUNTINFO, "0::/user.slice\n", base_override="/berth.slice")
    assert pinned.bases["v2"] == Path("/sys/fs/cgroup/berth.slice")


def test_no_cgroups_at_all_is_a_clear_error():
    with pytest.raises(DriverError, match="no usable cgroup hierarchy"):
        CgroupLayout.detect("", "0::/\n")


@pytest.fixture
def fake_v2(tmp_path: Path) -> CgroupLayout:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return CgroupLayout(version=2, bases={"v2": tmp_path})


def test_v2_parent_enables_controllers_down_the_chain(fake_v2: CgroupLayout, tmp_path: Path):
    (tmp_path / "berth-x").mkdir()
    (tmp_path / "berth-x" / "cgroup.subtree_control").write_text("")
    fake_v2.ensure_parent("berth-x")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (tmp_path / "berth-x" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"


def test_v2_parent_without_controllers_is_refused(fake_v2: CgroupLayout, tmp_path: Path):
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(DriverError, match="lacks the memory, pids controller"):
        fake_v2.ensure_parent("berth-x")


def test_v2_create_update_stats_kill_freeze(fake_v2: CgroupLayout, tmp_path: Path):
    group = fake_v2.group("berth-x/u1")
    assert isinstance(group, CgroupV2)
    (tmp_path / "berth-x").mkdir()
    group.create(LIMITS)
    d = tmp_path / "berth-x" / "u1"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "pids.max").read_text() == "100"
    (d / "memory.swap.max").write_text("max")  # present on hosts with swap accounting
    group.update(Limits(memory_bytes=0, vcpus=0, pids_max=0))
    assert [(d / f).read_text() for f in ("memory.max", "cpu.max", "pids.max", "memory.swap.max")] \
        == ["max", "max 100000", "max", "0"]
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 7\n")
    (d / "pids.current").write_text("3\n")
    stats = group.stats()
    assert (stats.cpu_seconds, stats.memory_bytes, stats.oom_kills, stats.pids_limit_hits,
            stats.pids_current) == (2.5, 4096, 1, 7, 3)
    (d / "cgroup.procs").write_text("")
    (d / "cgroup.kill").write_text("0")
    group.kill()
    assert (d / "cgroup.kill").read_text() == "1"
    group.freeze()
    assert (d / "cgroup.freeze").read_text() == "1"
    group.thaw()
    assert (d / "cgroup.freeze").read_text() == "0"
    assert from_paths(group.paths()) == group


def test_v1_memsw_is_raised_before_and_lowered_after_the_memory_limit(tmp_path, monkeypatch):
    mem = tmp_path / "memory"
    mem.mkdir()
    (mem / "memory.limit_in_bytes").write_text(str(64 << 20))
    (mem / "memory.memsw.limit_in_bytes").write_text(str(64 << 20))
    writes: list[tuple[str, str]] = []
    real_write = cgroups._write
    monkeypatch.setattr(cgroups, "_write", lambda p, v: (writes.append((p.name, str(v))), real_write(p, v)))
    group = CgroupV1({"memory": mem})
    group.update(Limits(memory_bytes=128 << 20, vcpus=1, pids_max=1))
    assert [name for name, _ in writes] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    writes.clear()
    group.update(Limits(memory_bytes=32 << 20, vcpus=1, pids_max=1))
    assert [name for name, _ in writes] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(32 << 20)


def test_v1_create_rolls_back_when_a_hierarchy_fails(tmp_path):
    good, bad = tmp_path / "memory" / "c", tmp_path / "missing-parent" / "pids" / "c"
    (tmp_path / "memory").mkdir()
    with pytest.raises(DriverError, match="cannot create cgroup"):
        CgroupV1({"memory": good, "pids": bad}).create(LIMITS)
    assert not good.exists()
