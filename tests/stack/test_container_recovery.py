"""Issue 3's recovery, on the live stack: a container that dies behind Berth's back is tidied
and shown stopped, with its data kept; containers and their consoles survive a restart of the
host worker and the host agent."""

from __future__ import annotations

import os
import signal
import time

import pytest

from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.helpers import ConsoleClient, EventStream, host_leftovers, session_headers
from workers.drivers.container import firewall
from workers.drivers.container.state import ContainerPaths, veth_name

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def _traces(driver, uuid: str) -> dict[str, list[str]]:
    found = host_leftovers(uuid, veth_name(uuid))
    chains = [c for c in firewall.port_chains(driver.host) if uuid[:12] in c]
    return {**found, **({"firewall": chains} if chains else {})}


def _ordered(stack, hostname: str):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    events = EventStream(stack.ws_url, headers)
    instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"],
                              hostname=hostname)
    events.wait_state(instance.pk, "running", timeout=30)
    return instance, headers, events


def test_a_container_killed_behind_our_back_is_tidied_and_shown_stopped(stack):
    instance, headers, events = _ordered(stack, "victim")
    url = f"{stack.ws_url}ws/instances/{instance.pk}/console/"
    try:
        console = ConsoleClient(url, headers)
        console.run("echo kept > /root/note")
        console.close()
        driver, uuid = stack.host_driver(), instance.uuid.hex
        assert _traces(driver, uuid)  # running: veth, cgroups, rules
        os.kill(driver.status(uuid).pid, signal.SIGKILL)  # PID 1, not through Berth

        events.wait_state(instance.pk, "stopped", timeout=15)
        deadline = time.monotonic() + 10
        while _traces(driver, uuid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _traces(driver, uuid) == {}, stack.logs("agent")
        status = driver.status(uuid)
        assert (status.state, status.detail) == ("stopped", "killed by signal 9")
        assert ContainerPaths.of(driver.host, uuid).disk.exists()
        instance.refresh_from_db()
        assert instance.state == "stopped"

        request_action(instance=instance, action="start")
        events.wait_state(instance.pk, "running", timeout=30)
        console = ConsoleClient(url, headers)
        assert console.run("cat /root/note").strip() == "kept"
        console.close()
    finally:
        events.close()


def _console_works(url: str, headers, timeout: float = 30) -> ConsoleClient:
    """A console whose commands run: the restarted agent may take a moment to reattach."""
    deadline = time.monotonic() + timeout
    while True:
        console = ConsoleClient(url, headers)
        try:
            console.run("true", timeout=3)
            return console
        except TimeoutError:
            console.close()
            if time.monotonic() > deadline:
                raise


def test_containers_and_consoles_survive_a_restart_of_the_host_worker_and_agent(stack):
    instance, headers, events = _ordered(stack, "survivor")
    url = f"{stack.ws_url}ws/instances/{instance.pk}/console/"
    try:
        console = ConsoleClient(url, headers)
        assert console.run("echo before-$((6*7))").strip() == "before-42"
        console.close()
        driver, uuid = stack.host_driver(), instance.uuid.hex
        pid = driver.status(uuid).pid

        stack.stop("agent", signal.SIGKILL)
        stack.stop("host-worker", signal.SIGKILL)
        status = driver.status(uuid)
        assert (status.state, status.pid, status.detail) == ("running", pid, "")
        stack.restart("host-worker")
        stack.restart("agent")

        console = _console_works(url, headers)
        # the scrollback from before the restart is intact, and the console is live
        replay = ConsoleClient(url, headers)
        replay.read_until(b"before-42", timeout=10)
        replay.close()
        assert console.run("echo after-$((6*7)); echo $$").split() == ["after-42", "1"]
        console.close()
        assert driver.status(uuid).pid == pid
        instance.refresh_from_db()
        assert instance.state == "running"

        request_action(instance=instance, action="stop")  # the new host worker takes it
        events.wait_state(instance.pk, "stopped", timeout=30)
        assert driver.status(uuid).state == "stopped"
    finally:
        events.close()
