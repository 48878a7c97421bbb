"""Reconciliation: status tells the truth about containers changed behind Berth's back, and
host objects nobody accounts for are listed, never deleted."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from workers.drivers.base import PowerState
from workers.drivers.container.state import ContainerPaths, ProcRef

pytestmark = pytest.mark.root


def _wait_state(driver, uuid, state, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (status := driver.status(uuid)).state != state and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def test_a_container_killed_behind_our_back_shows_stopped(container, ct_driver, leftovers):
    os.kill(ct_driver.status(container.uuid).pid, signal.SIGKILL)
    status = _wait_state(ct_driver, container.uuid, PowerState.STOPPED)
    assert (status.state, status.detail) == (PowerState.STOPPED, "killed by signal 9")
    assert [s.state for s in ct_driver.list_instances() if s.uuid == container.uuid] == \
        [PowerState.STOPPED]
    ct_driver.stop(container)  # tidies what only a running container needs
    assert set(leftovers(container.uuid)) == {"files"}
    assert ct_driver.start(container).state == PowerState.RUNNING


def test_a_container_deleted_behind_our_back_is_listed_as_orphan(ct_driver, make_spec, leftovers):
    spec = make_spec()
    ct_driver.create(spec)
    paths = ContainerPaths.of(ct_driver.host, spec.uuid)
    shim = ProcRef.load(paths.shim_pid)
    shutil.rmtree(paths.dir)
    try:
        assert spec.uuid not in [s.uuid for s in ct_driver.list_instances()]
        ours = {(o.kind, o.ref) for o in ct_driver.list_orphans() if spec.uuid.startswith(o.ref)}
        assert {kind for kind, _ in ours} == {"process", "cgroup", "veth", "firewall"}
        assert ("process", spec.uuid) in ours and ("cgroup", spec.uuid) in ours
        assert shim.alive()  # listed, not touched: the container still runs
        assert {(o.kind, o.ref) for o in ct_driver.list_orphans()} >= ours  # and again
    finally:
        ct_driver.destroy(spec)
    assert not [o for o in ct_driver.list_orphans() if spec.uuid.startswith(o.ref)]
    deadline = time.monotonic() + 5
    while shim.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not shim.alive() and leftovers(spec.uuid) == {}
