"""Faults on a host, caused for real: its agent killed while a customer stops a container from
inside, and things changed behind Berth's back (a container killed, a veth deleted, a VM
destroyed and undefined with virsh). The panel must end up right and say what happened,
and never "fix" anything by deleting the customer's data.
"""

import signal
import subprocess
import time
from pathlib import Path

import pytest

from panel.audit.models import AuditEntry
from panel.hosts.models import IpAddress
from panel.hosts.tasks import reconcile_hosts
from panel.instances.models import Instance, Operation
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.fault_tools import wait_until
from tests.stack.helpers import ConsoleClient, session_headers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def _state(instance: Instance) -> str:
    return Instance.objects.get(pk=instance.pk).state


def _wait_state(stack, instance: Instance, state: str, timeout: float = 60) -> None:
    wait_until(lambda: _state(instance) == state, timeout,
               f"{instance.hostname} never became {state} (is {_state(instance)})",
               lambda: f"{_history(instance)}\n{stack.all_logs()}")


def _history(instance: Instance) -> str:
    entries = AuditEntry.objects.filter(target_type="instance", target_id=str(instance.pk)).order_by("id")
    return "\n".join(f"  {e.at:%H:%M:%S.%f} {e.action}: {e.message}" for e in entries)


def _audit(instance: Instance, action: str) -> list[str]:
    return list(AuditEntry.objects.filter(action=action, target_type="instance", target_id=str(instance.pk))
                .order_by("id").values_list("message", flat=True))


def _order(stack, rows, customer, hostname: str, kind: str = "container") -> Instance:
    plan, image = (rows["plan"], rows["image"]) if kind == "container" else (rows["vm_plan"], rows["vm_image"])
    instance = order_instance(customer=customer, plan=plan, image=image, hostname=hostname)
    _wait_state(stack, instance, "running", timeout=60 if kind == "container" else 180)
    instance.refresh_from_db()
    return instance


def test_a_stop_from_inside_while_the_agent_is_down_is_noticed_when_it_returns(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    leaving, staying = _order(stack, rows, customer, "leaving"), _order(stack, rows, customer, "staying")
    driver = stack.host_driver()

    console = ConsoleClient(f"{stack.ws_url}ws/instances/{leaving.pk}/console/", headers)
    console.ws.send(b"sleep 3; exit 7\r")
    console.read_until(b"exit 7")  # the shell has the line: it exits in 3 s, agent or not
    console.close()
    stack.stop("agent", signal.SIGKILL)
    wait_until(lambda: driver.status(leaving.uuid.hex).state == "stopped", 20,
               "the container did not stop from inside", stack.all_logs)
    time.sleep(2)
    assert _state(leaving) == "running"  # nobody has told the panel yet

    stack.restart("agent")
    _wait_state(stack, leaving, "stopped", timeout=30)
    assert "exited with status 7" in driver.status(leaving.uuid.hex).detail
    assert any("stopped on its host" in m for m in _audit(leaving, "instance.state_observed")), _history(leaving)
    assert _state(staying) == "running"
    # Nothing was done to the instance on the panel's initiative (no restart, no destroy).
    assert list(Operation.objects.filter(instance=leaving).values_list("action", flat=True)) == ["create"]

    # The console of the one still running reattached.
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{staying.pk}/console/", headers)
    try:
        assert console.run("echo back-$((6*7))").strip() == "back-42"
    finally:
        console.close()

    # And the stopped one starts again normally.
    request_action(instance=leaving, action="start")
    _wait_state(stack, leaving, "running")


def test_a_container_killed_behind_berths_back_is_reported_and_its_data_kept(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    instance = _order(stack, rows, customer, "victim")
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", headers)
    console.run("echo precious > /root/data; sync")
    console.close()
    driver = stack.host_driver()
    addresses = instance.ipv4

    subprocess.run(["kill", "-KILL", str(driver.status(instance.uuid.hex).pid)], check=True)
    _wait_state(stack, instance, "stopped")
    reconcile_hosts()  # the periodic reconcile sees the same and changes nothing more
    time.sleep(3)

    assert _state(instance) == "stopped"
    assert _audit(instance, "instance.state_observed"), _history(instance)
    assert list(IpAddress.objects.filter(instance=instance).values_list("address", flat=True)) == addresses
    assert list(Operation.objects.filter(instance=instance).values_list("action", flat=True)) == ["create"]
    assert driver.status(instance.uuid.hex).state == "stopped"  # still on the host, disk and all

    request_action(instance=instance, action="start")
    _wait_state(stack, instance, "running")
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", headers)
    try:
        assert console.run("cat /root/data").strip() == "precious"
    finally:
        console.close()


def test_a_deleted_veth_is_reported_by_reconcile_and_nothing_is_deleted(stack):
    rows = stack.seed()
    instance = _order(stack, rows, CustomerFactory(), "cutoff")
    link = f"bv{instance.uuid.hex[:12]}"
    subprocess.run(["ip", "link", "del", link], check=True)

    reconcile_hosts()
    wait_until(lambda: _audit(instance, "instance.drift"), 30, "reconcile did not report the deleted veth",
               stack.all_logs)
    [message] = _audit(instance, "instance.drift")
    assert link in message and "cut off" in message
    reconcile_hosts()  # a second reconcile finds the same and stays quiet
    time.sleep(3)
    assert len(_audit(instance, "instance.drift")) == 1
    assert _state(instance) == "running"
    assert stack.host_driver().status(instance.uuid.hex).state == "running"
    assert list(Operation.objects.filter(instance=instance).values_list("action", flat=True)) == ["create"]

    # Stopping and starting makes the link again.
    request_action(instance=instance, action="stop")
    _wait_state(stack, instance, "stopped")
    request_action(instance=instance, action="start")
    _wait_state(stack, instance, "running")
    assert subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0


@pytest.mark.vm
def test_a_vm_destroyed_then_undefined_with_virsh_is_reported_and_its_disk_kept(stack):
    rows = stack.seed()
    stack.wait_for_vms()
    instance = _order(stack, rows, CustomerFactory(), "vmvictim", kind="vm")
    domain = f"berth-{stack.host_name}-{instance.uuid.hex[:12]}"  # workers/drivers/vm/naming.py
    virsh = ["virsh", "-c", "qemu:///system"]

    subprocess.run([*virsh, "destroy", domain], check=True, capture_output=True)
    _wait_state(stack, instance, "stopped")  # libvirt's lifecycle event, through the agent

    disks = sorted(str(p) for p in Path(stack.host_env["BERTH_STATE_DIR"]).rglob("*")
                   if instance.uuid.hex in str(p) and p.is_file())
    assert disks, "the VM's files should be on the host"
    subprocess.run([*virsh, "undefine", domain], check=True, capture_output=True)
    reconcile_hosts()
    _wait_state(stack, instance, "error")
    instance.refresh_from_db()
    # Seen by libvirt's event at once, or by the reconcile at the latest; the reason is kept.
    # (the agent's "absent" report and the reconcile word it differently)
    assert any(words in instance.error for words in ("removed", "no longer on its host",
                                                     "disappeared from its host")), instance.error
    # Reported, never cleaned up by deleting the customer's disk or address.
    assert all(Path(p).exists() for p in disks)
    assert instance.ipv4
    assert list(Operation.objects.filter(instance=instance).values_list("action", flat=True)) == ["create"]

    request_action(instance=instance, action="terminate")  # the owner's decision: then it goes
    _wait_state(stack, instance, "terminated")
    assert not any(Path(p).exists() for p in disks)
