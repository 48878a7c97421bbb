"""BERTH_CGROUP_BASE (HostConfig.cgroup_base): under systemd (deploy/) the host worker and the
agent are two units, each in a cgroup of its own, so containers go below one cgroup named in
host.env instead of below the worker's own. A real container here: its cgroups are where the
base says in every hierarchy, and another driver of the host (the agent's) finds and measures
it from its own, different cgroup."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from pathlib import Path

import pytest

from tests.workers.conftest import host_leftovers, make_host, sweep
from workers.config import load_host_settings
from workers.drivers.base import NetworkSpec, PowerState
from workers.drivers.container import ContainerDriver
from workers.drivers.container.state import ContainerPaths

pytestmark = pytest.mark.root


def test_containers_go_below_the_configured_base(ct_root, busybox_image, shim_binary, make_spec):
    base = f"/berth-test-{secrets.token_hex(3)}"
    host = make_host(ct_root, busybox_image.path.parent)
    # As the worker reads it from its environment (host.env).
    env = {"BERTH_HOST_NAME": host.name, "BERTH_GATEWAY": host.gateway,
           "BERTH_STATE_DIR": str(host.state_dir), "BERTH_IMAGE_DIR": str(host.image_dir),
           "BERTH_BRIDGE": host.bridge, "BERTH_UID_BASE": str(host.uid_base), "BERTH_UID_SLOTS": "64",
           "BERTH_CGROUP_BASE": base, "BERTH_REDIS_URL": "redis://127.0.0.1:6379/2"}
    host = load_host_settings(env).host
    assert host.cgroup_base == base
    driver = ContainerDriver(host, shim_path=shim_binary)
    spec = make_spec(network=NetworkSpec(
        address=f"{host.gateway.rsplit('.', 1)[0]}.10", prefixlen=24, gateway=host.gateway,
        mac="02:be:fe:00:00:10", bridge=host.bridge))
    try:
        bases = driver.layout.bases
        assert bases and all(b.name == base[1:] and os.path.ismount(b.parent) for b in bases.values()), bases
        driver.prepare_host()
        pid = driver.create(spec).pid
        recorded = json.loads(ContainerPaths.of(host, spec.uuid).cgroups.read_text())
        assert recorded == {k: str(b / host.cgroup_name / spec.uuid) for k, b in bases.items()}
        # PID 1 is in them, not below this process's own cgroup.
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(",") or (controllers == "" and "v2" in bases):
                assert path == f"{base}/{host.cgroup_name}/{spec.uuid}", line
        # The agent: another process of the host, its driver built afresh from the same config.
        agent = ContainerDriver(host, shim_path=shim_binary)
        assert [(s.uuid, s.state) for s in agent.list_instances()] == [(spec.uuid, PowerState.RUNNING)]
        assert agent.stats(spec.uuid).memory_bytes > 0
        driver.destroy(spec)
        assert not any((b / host.cgroup_name / spec.uuid).exists() for b in bases.values())
    finally:
        sweep(driver)
        left = host_leftovers(driver)
        ours = [b for b in driver.layout.bases.values() if b.name == base[1:]]  # never another cgroup
        for b in ours:
            with contextlib.suppress(FileNotFoundError):
                b.rmdir()
    assert not left, left
    assert ours and not any(b.exists() for b in ours)


def test_without_a_base_containers_stay_below_the_callers_cgroup(ct_host):
    """The default (make run, the tests): below the caller's own cgroup, as before."""
    own = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    bases = ContainerDriver(dataclasses.replace(ct_host, cgroup_base=None)).layout.bases
    key, mine = ("memory", own.get("memory")) if "memory" in bases else ("v2", own.get(""))
    assert mine is not None
    assert bases[key] == (Path("/sys/fs/cgroup") / ("memory" if key == "memory" else "") / mine.lstrip("/")).resolve()
