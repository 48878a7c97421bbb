"""The host agent's scan (workers/agent.py): each driver's consoles are attached as soon as
that driver has listed its instances, so containers never wait for a libvirtd that takes
its time; a driver that could not list its instances says nothing about them (they are not
reported absent, their scrollback is kept). The real thing, with a libvirt that does not
answer, is in tests/stack/test_console.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from workers import agent as agent_module
from workers.config import load_host_settings
from workers.drivers.base import DriverError, InstanceStatus, PowerState

RUNNING = PowerState.RUNNING


class FakeDriver:
    def __init__(self, kind: str, statuses: list[InstanceStatus]):
        self.kind = kind
        self.statuses = statuses
        self.release = threading.Event()
        self.release.set()
        self.fail = False

    def list_instances(self) -> list[InstanceStatus]:
        self.release.wait(30)
        if self.fail:
            raise DriverError("cannot list domains: libvirt went away")
        return list(self.statuses)


class FakeRedis:
    def __init__(self):
        self.deleted: list[str] = []

    async def delete(self, key: str) -> None:
        self.deleted.append(key)


@pytest.fixture
def agent(monkeypatch):
    settings = load_host_settings({"BERTH_HOST_NAME": "tscan", "BERTH_GATEWAY": "10.9.9.1",
                                   "BERTH_REDIS_URL": "redis://127.0.0.1:1/0"})
    agent = agent_module.Agent(settings)
    agent.redis = FakeRedis()
    agent.reports, agent.attached = [], []

    async def report(task, **kwargs):
        agent.reports.append((kwargs["uuid"], kwargs["power_state"]))

    agent.report = report

    def attach(uuid, driver):
        agent.attached.append(uuid)
        agent.relays[uuid] = driver  # as a running relay would be

    agent.attach = attach
    monkeypatch.setattr(agent_module, "LIST_TIMEOUT_SECONDS", 1.0)
    return agent


async def test_containers_are_attached_while_libvirt_has_not_answered_yet(agent):
    container = FakeDriver("container", [InstanceStatus(uuid="c" * 32, state=RUNNING)])
    vm = FakeDriver("vm", [InstanceStatus(uuid="v" * 32, state=RUNNING)])
    vm.release.clear()  # libvirtd busy
    agent.drivers = {"vm": vm, "container": container}
    scan = asyncio.create_task(agent.scan(report_all=True))
    async with asyncio.timeout(0.5):
        while not agent.attached:
            await asyncio.sleep(0.01)
    assert agent.attached == ["c" * 32]  # at once, the VM listing still under way
    await scan  # given up on after LIST_TIMEOUT_SECONDS
    assert agent.reports == [("c" * 32, "running")]
    vm.release.set()
    await asyncio.sleep(0.1)  # the listing that was left running ends
    await agent.scan()
    assert agent.attached == ["c" * 32, "v" * 32]
    assert ("v" * 32, "running") in agent.reports  # its first listing reports it in full


async def test_a_driver_that_cannot_list_says_nothing_about_its_instances(agent):
    container = FakeDriver("container", [InstanceStatus(uuid="c" * 32, state=RUNNING)])
    vm = FakeDriver("vm", [InstanceStatus(uuid="v" * 32, state=RUNNING)])
    agent.drivers = {"container": container, "vm": vm}
    await agent.scan(report_all=True)
    agent.reports.clear()
    vm.fail = True  # libvirtd restarting
    await agent.scan()
    assert agent.reports == [] and agent.redis.deleted == []  # not "absent", scrollback kept
    assert agent.known == {"c" * 32: "running", "v" * 32: "running"}
    vm.fail, vm.statuses = False, []  # back; the VM really is gone now
    await agent.scan()
    assert agent.reports == [("v" * 32, "absent")]
    assert agent.redis.deleted == [f"berth:host:tscan:console:{'v' * 32}"]
