"""Issue 4 through the panel, on the live stack with a real tiny VM (TCG here): order, live
states, the serial console from the first byte of boot, input, a poweroff from inside pushed
as ``stopped``, start, ACPI stop, reboot, change plan, rebuild, terminate leaving nothing, and
domains changed with ``virsh`` behind Berth's back noticed and audited."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import time
from pathlib import Path

import pytest

from panel.audit.models import AuditEntry
from panel.catalog.models import Plan
from panel.instances.models import Instance, Operation
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.helpers import ConsoleClient, EventStream, session_headers
from workers.drivers.vm.naming import domain_name

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.stack,
              pytest.mark.django_db(transaction=True)]

BOOT = 90  # seconds: TCG on two shared cores


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, check=True).stdout


def domains() -> list[str]:
    return virsh("list", "--all", "--name").split()


def wait_operation(operation: Operation, timeout: float = 60) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation.refresh_from_db()
        if operation.is_finished:
            return operation
        time.sleep(0.1)
    raise TimeoutError(f"{operation} did not finish")


def observed(instance: Instance) -> list[str]:
    return list(AuditEntry.objects.filter(action="instance.state_observed", target_type="instance",
                                          target_id=str(instance.pk))
                .order_by("at", "id").values_list("message", flat=True))


@pytest.fixture
def vm_setup(stack):
    rows = stack.seed()
    stack.wait_for_vms()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    events = EventStream(stack.ws_url, headers)
    yield stack, rows, customer, headers, events
    events.close()


def wait_state(stack, events: EventStream, instance: Instance, state: str,
               timeout: float) -> list[str]:
    try:
        return events.wait_state(instance.pk, state, timeout=timeout)
    except TimeoutError as exc:
        logs = "\n".join(f"--- {n} ---\n{stack.logs(n, 80)}"
                         for n in ("host-worker", "agent", "panel-worker"))
        pytest.fail(f"{exc}\n{logs}")


def states_so_far(stack, events: EventStream, instance: Instance, timeout: float = 15) -> list[str]:
    """Every state the browser was sent, once it has caught up with the database's latest."""
    instance.refresh_from_db()
    deadline = time.monotonic() + timeout
    while True:
        versions = {e["instance"]["version"]: e["instance"]["state"] for e in events.seen
                    if e["type"] == "instance.state" and e["instance"]["id"] == instance.pk}
        if versions and max(versions) >= instance.state_version:
            return [versions[v] for v in sorted(versions)]
        if time.monotonic() > deadline:
            pytest.fail(f"events stopped at {versions}, the database is at "
                        f"{instance.state_version} ({instance.state})")
        with contextlib.suppress(queue.Empty):
            events.seen.append(events.events.get(timeout=0.2))


def console_url(stack, instance: Instance) -> str:
    return f"{stack.ws_url}ws/instances/{instance.pk}/console/"


def ready(hostname: str) -> bytes:
    return f"Berth tiny guest {hostname} ready".encode()


def at_prompt(console: ConsoleClient, hostname: str, boots: int = 1) -> bytes:
    """Read past the ``boots``-th boot's banner to its prompt. A new viewer gets the whole
    scrollback first (every boot since the VM was created), so earlier boots are skipped."""
    before = b""
    for _ in range(boots):
        before += console.read_until(ready(hostname), BOOT) + ready(hostname)
    return before + console.read_until(f"{hostname}# ".encode(), BOOT)


def open_console(stack, instance: Instance, headers, boots: int) -> ConsoleClient:
    console = ConsoleClient(console_url(stack, instance), headers)
    at_prompt(console, instance.hostname, boots)
    return console


def test_vm_order_console_power_and_lifecycle(vm_setup):
    stack, rows, customer, headers, events = vm_setup
    instance = order_instance(customer=customer, plan=rows["vm_plan"], image=rows["vm_image"],
                              hostname="vm-1")
    states = wait_state(stack, events, instance, "running", BOOT)
    assert states == ["pending", "provisioning", "running"], stack.all_logs()
    instance.refresh_from_db()
    [address] = instance.ipv4
    uuid = instance.uuid.hex
    name = domain_name(stack.host_driver("vm").host, uuid)
    vm_dir = Path(stack.host_env["BERTH_STATE_DIR"]) / "vms" / uuid

    # The console replays the boot from its first byte: the VM started paused, the agent
    # attached, then it ran. What the viewer gets first is what the serial log starts with.
    console = ConsoleClient(console_url(stack, instance), headers)
    boot = at_prompt(console, "vm-1")
    log = (vm_dir / "serial.log").read_bytes()
    assert len(boot) > 50 and log.startswith(boot), (boot[:300], log[:300])
    gateway = stack.host_env["BERTH_GATEWAY"]
    assert f"berth: vm-1 {address}/24 via {gateway}".encode() in boot
    assert console.run("hostname").strip() == "vm-1"
    assert f"inet {address}/24" in console.run("ip -4 addr show eth0")

    # Powered off from inside: libvirt's lifecycle event, not a poll, moves it to stopped.
    console.ws.send(b"poweroff -f\r")
    t0 = time.monotonic()
    wait_state(stack, events, instance, "stopped", 15)
    print(f"\npoweroff -f inside -> 'stopped' event in the browser: {time.monotonic() - t0:.2f} s")
    console.close()
    assert any("libvirt: stopped: guest powered off" in m for m in observed(instance)), \
        observed(instance)
    assert name in domains()  # still defined: it can be started again

    op = request_action(instance=instance, action="start")
    wait_state(stack, events, instance, "running", BOOT)
    assert wait_operation(op).state == "succeeded"
    open_console(stack, instance, headers, boots=2).close()  # the second boot, same stream

    # A graceful stop reaches the guest as the ACPI power button.
    op = request_action(instance=instance, action="stop")
    wait_state(stack, events, instance, "stopped", 30)
    op = wait_operation(op)
    assert op.state == "succeeded", op.error
    assert "ACPI power button" in op.progress, op.progress

    op = request_action(instance=instance, action="start")
    wait_state(stack, events, instance, "running", BOOT)
    wait_operation(op)
    console = open_console(stack, instance, headers, boots=3)
    console.run("echo first-boot > /tmp/mark")

    op = request_action(instance=instance, action="reboot")
    assert wait_operation(op).state == "succeeded", op.error
    assert "ACPI power button" in op.progress, op.progress
    states = states_so_far(stack, events, instance)
    assert states[-2:] == ["rebooting", "running"], states
    at_prompt(console, "vm-1")  # the fourth boot, live on the same console
    assert "No such file" in console.run("cat /tmp/mark 2>&1")  # RAM root: gone with the reboot

    # Change plan while running: vCPUs/memory cannot change live; the result says so.
    bigger = Plan.objects.create(name="vm-big", kind="vm", vcpus=2, memory_mib=384, disk_gib=2)
    op = request_action(instance=instance, action="change_plan", params={"plan": bigger.pk})
    op = wait_operation(op)
    assert op.state == "succeeded", op.error
    assert "1→2 vCPU, 256→384 MiB: takes effect at the next stop and start" in op.progress
    assert "disk grown to 2 GiB live" in op.progress
    assert console.run("grep -c ^processor /proc/cpuinfo").strip() == "1"
    console.close()
    assert "<vcpu placement='static'>2</vcpu>" in virsh("dumpxml", "--inactive", name)

    op = request_action(instance=instance, action="stop")
    wait_state(stack, events, instance, "stopped", 30)
    wait_operation(op)
    op = request_action(instance=instance, action="start")
    wait_state(stack, events, instance, "running", BOOT)
    wait_operation(op)
    console = open_console(stack, instance, headers, boots=5)
    assert console.run("grep -c ^processor /proc/cpuinfo").strip() == "2"

    # Rebuild: a fresh disk from the image, the same address, booted with the console attached.
    console.run("echo old > /dev/vda 2>&1; sync")
    op = request_action(instance=instance, action="rebuild")
    assert wait_operation(op).state == "succeeded", op.error
    states = states_so_far(stack, events, instance)
    assert states[-2:] == ["provisioning", "running"], states
    at_prompt(console, "vm-1")  # the sixth boot
    assert console.run("head -c 3 /dev/vda | od -An -c").split() != ["o", "l", "d"]
    console.close()

    op = request_action(instance=instance, action="terminate")
    wait_state(stack, events, instance, "terminated", 60)
    assert wait_operation(op).state == "succeeded"
    assert name not in domains()
    assert not vm_dir.exists()
    instance.refresh_from_db()
    assert instance.ipv4 == []


def test_vm_changed_behind_berths_back_is_noticed_and_audited(vm_setup):
    from panel.celery import app
    from panel.instances.services.reconcile import reconcile_host

    stack, rows, customer, headers, events = vm_setup
    instance = order_instance(customer=customer, plan=rows["vm_plan"], image=rows["vm_image"],
                              hostname="vm-2")
    wait_state(stack, events, instance, "running", BOOT)
    name = domain_name(stack.host_driver("vm").host, instance.uuid.hex)

    virsh("destroy", name)  # pulled the plug with virsh: pushed by libvirt's event
    wait_state(stack, events, instance, "stopped", 15)
    virsh("start", name)  # started with virsh
    wait_state(stack, events, instance, "running", 15)
    # Its definition edited with virsh: the next reconcile reports how it differs from the plan,
    # once (a reconcile that finds the same difference again stays quiet).
    virsh("setmaxmem", name, "393216", "--config")  # KiB: 384 MiB from the next boot on
    app.send_task("berth.host.reconcile", queue=f"host.{stack.host_name}")
    drift = AuditEntry.objects.filter(action="instance.config_drift", target_id=str(instance.pk))
    deadline = time.monotonic() + 20
    while not drift.exists():
        assert time.monotonic() < deadline, "no config drift reported"
        time.sleep(0.2)
    assert drift.get().message.startswith(
        "Changed on the host behind Berth's back: 384 MiB on the host, 256 in plan vm-test.")
    report = [{"uuid": instance.uuid.hex, "state": "running", "kind": "vm", "vcpus": 1,
               "memory_mib": 384}]
    reconcile_host(host_name=stack.host_name, instances=report)
    assert drift.count() == 1

    virsh("destroy", name)
    wait_state(stack, events, instance, "stopped", 15)
    virsh("undefine", name)  # removed with virsh: the panel says it is gone
    wait_state(stack, events, instance, "error", 15)
    instance.refresh_from_db()
    messages = observed(instance)
    assert any("libvirt: stopped: destroyed" in m for m in messages), messages
    assert any(m.startswith("stopped → running") for m in messages), messages
    # Said by the lifecycle event ("undefined: removed") or the agent's next scan, whichever
    # reaches the panel first.
    assert messages[-1].startswith("stopped → error: "), messages
    assert instance.error

    op = request_action(instance=instance, action="terminate")
    wait_state(stack, events, instance, "terminated", 60)
    assert wait_operation(op).state == "succeeded"
    vm_dir = Path(stack.host_env["BERTH_STATE_DIR"]) / "vms" / instance.uuid.hex
    assert not vm_dir.exists() and name not in domains()


def test_vm_destroyed_while_the_agent_was_away_is_found_by_reconcile(vm_setup):
    """No lifecycle event reached the panel (the agent was down): the periodic reconcile
    still notices the domain was destroyed, moves the instance and says why."""
    from panel.celery import app

    stack, rows, customer, headers, events = vm_setup
    instance = order_instance(customer=customer, plan=rows["vm_plan"], image=rows["vm_image"],
                              hostname="vm-3")
    wait_state(stack, events, instance, "running", BOOT)
    name = domain_name(stack.host_driver("vm").host, instance.uuid.hex)
    stack.stop("agent")
    try:
        virsh("destroy", name)
        app.send_task("berth.host.reconcile", queue=f"host.{stack.host_name}")
        wait_state(stack, events, instance, "stopped", 30)
    finally:
        stack.restart("agent")
    assert any(m.startswith("running → stopped: Reconcile: the host reports it stopped")
               for m in observed(instance)), observed(instance)


def test_the_admin_sees_which_virtualization_the_host_uses_and_why(stack):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from workers.drivers.vm.capabilities import load_verdict

    stack.seed()
    host = stack.wait_for_vms()
    verdict = load_verdict(Path(stack.host_env["BERTH_STATE_DIR"]) / "virtualization.json")
    assert (host.virt_type, host.virt_reason) == (verdict.domain_type, verdict.reason[:300])
    admin = get_user_model().objects.create_superuser("root-admin", password="x" * 20)
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/hosts/host/").content.decode()
    shown = {"kvm": "KVM", "qemu": "TCG (software emulation)"}[verdict.domain_type]
    assert f"<td class=\"field-virtualization\">{shown}</td>" in page
    assert verdict.reason[:40] in page
