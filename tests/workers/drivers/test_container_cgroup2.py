"""cgroup v2 for real, as far as this machine allows.

Its kernel binds the memory, cpu and pids controllers to v1 hierarchies, so a cgroup2 tree here
(the "unified" mount) has no controllers: v2 *limits* cannot be tested on it (see
test_container_cgroups.py for them against a fake cgroupfs). What a real cgroup2 tree does
prove: the layout detection of a pure-v2 host and its refusal when the controllers are not
delegated, the v2 backend's process handling (cgroup.procs, cgroup.freeze, cgroup.kill,
removal), and that PID 1 is born in its cgroup2 directory (clone3 CLONE_INTO_CGROUP)."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.workers.conftest import make_host, sweep
from workers.drivers.base import DriverError, NetworkSpec
from workers.drivers.container import ContainerDriver, cgroups
from workers.drivers.container.cgroups import CgroupLayout, CgroupV2, Limits
from workers.drivers.container.state import ContainerPaths

pytestmark = pytest.mark.root


def _cgroup2_only() -> tuple[str, str]:
    """This machine's /proc texts as a pure cgroup2 host would show them."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    v2 = [line for line in mountinfo.splitlines() if " - cgroup2 " in line]
    if not v2:
        pytest.skip("no cgroup2 hierarchy mounted")
    proc = [line for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")]
    return "\n".join(v2) + "\n", "\n".join(proc) + "\n"


@pytest.fixture
def v2_layout() -> CgroupLayout:
    layout = CgroupLayout.detect(*_cgroup2_only())
    assert layout.version == 2 and layout.bases["v2"].is_dir()
    return layout


@pytest.fixture
def v2_group(v2_layout):
    path = v2_layout.bases["v2"] / f"berth-test-{secrets.token_hex(4)}"
    path.mkdir()
    group = CgroupV2(path)
    yield group
    with contextlib.suppress(DriverError):
        group.destroy()


def test_a_v2_host_without_delegated_controllers_is_refused_clearly(v2_layout):
    relpath = f"berth-test-{secrets.token_hex(4)}"
    try:
        with pytest.raises(DriverError, match=r"lacks the memory, cpu, pids controller"):
            v2_layout.ensure_parent(relpath)
    finally:
        v2_layout.remove(relpath)


def test_limits_cannot_be_set_without_controllers_and_nothing_is_left(v2_layout):
    group = CgroupV2(v2_layout.bases["v2"] / f"berth-test-{secrets.token_hex(4)}")
    with pytest.raises(DriverError, match="memory.max"):
        group.create(Limits(memory_bytes=64 << 20, vcpus=1, pids_max=10))
    assert not group.exists()


def test_the_v2_backend_holds_freezes_kills_and_removes_real_processes(v2_group):
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for proc in procs:
            v2_group.add(proc.pid)
        assert sorted(v2_group.procs()) == sorted(p.pid for p in procs)
        v2_group.freeze()
        events = v2_group.path / "cgroup.events"
        deadline = time.monotonic() + 5
        while "frozen 1" not in events.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "frozen 1" in events.read_text()
        v2_group.thaw()
        v2_group.kill()  # cgroup.kill
        assert v2_group.procs() == []
        assert all(p.wait(timeout=5) == -9 for p in procs)
        v2_group.destroy()
        assert not v2_group.exists()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def test_a_container_on_a_cgroup2_layout_is_born_in_its_cgroup(
        v2_layout, ct_root, busybox_image, shim_binary, make_spec, monkeypatch):
    """A whole container on a pure-cgroup2 layout, over the real cgroup2 tree. Its limits
    cannot be written (no controllers here), so only they are skipped: PID 1 is cloned into its
    directory (CLONE_INTO_CGROUP, the driver never migrates it), the cgroup is killed and
    removed with the container."""
    monkeypatch.setattr(cgroups, "V2_CONTROLLERS", ())
    monkeypatch.setattr(CgroupV2, "update", lambda self, limits: None)
    driver = ContainerDriver(make_host(ct_root, busybox_image.path.parent), shim_path=shim_binary)
    driver._layout = v2_layout
    migrated: list[int] = []
    monkeypatch.setattr(CgroupV2, "add", lambda self, pid: migrated.append(pid))
    driver.prepare_host()
    spec = make_spec(network=NetworkSpec(
        address=f"{driver.host.gateway.rsplit('.', 1)[0]}.10", prefixlen=24,
        gateway=driver.host.gateway, mac="02:be:fd:00:00:10", bridge=driver.host.bridge))
    try:
        pid = driver.create(spec).pid
        directory = v2_layout.bases["v2"] / driver.host.cgroup_name / spec.uuid
        assert json.loads(ContainerPaths.of(driver.host, spec.uuid).cgroups.read_text()) == \
            {"v2": str(directory)}
        line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                    if x.startswith("0::"))
        assert line.endswith(f"/{driver.host.cgroup_name}/{spec.uuid}")
        assert str(pid) in (directory / "cgroup.procs").read_text().split()
        assert migrated == []
        driver.destroy(spec)
        assert not directory.exists()
    finally:
        sweep(driver)
