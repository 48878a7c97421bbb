"""Moving instances between two real hosts (issue 10), through the panel: each host its own
worker, agent, state dir, bridge, subnet and uid range (``tests/stack/fleet.py``), the archive
through a directory both mount. A running container and a running VM are moved with a file
written before the move and read back on the target after it, the source cleaned; an archive
corrupted between the export and the import leaves the container whole and running on its
source, the target clean."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from panel.catalog.models import Image, Plan
from panel.hosts.models import Host, IpAddress
from panel.instances.models import Instance, Operation
from panel.instances.services.moves import request_move
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.fleet import fleet_fixture, fresh_fleet_fixture, wait_until  # noqa: F401
from tests.stack.helpers import ConsoleClient, session_headers
from workers.drivers.base import PowerState
from workers.drivers.container.state import ContainerPaths, root_uid

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

FLEET_VMS = True  # the fleet's hosts run VMs too
BOOT = 180  # seconds: a TCG VM on two cores shared with other test runs


@pytest.fixture
def setup(fresh_fleet, settings):
    fleet = fresh_fleet
    a, b = fleet.hosts
    settings.BERTH_BACKUP_TARGET = fleet.root / "shared-backups"  # the directory both hosts mount
    rows = fleet.seed(a, b)
    admin = get_user_model().objects.create_user("mover", password="x" * 20, is_staff=True)
    wait_until(lambda: Host.objects.filter(status="online", supports_containers=True).count() == 2, 60,
               "both hosts online", fleet)
    return fleet, rows, admin


def order_on(fleet, rows, host_name: str, *, plan, image, hostname: str) -> Instance:
    """Order while only ``host_name`` takes new instances, then wait until it runs."""
    Host.objects.exclude(name=host_name).update(is_enabled=False)
    try:
        instance = order_instance(customer=CustomerFactory(max_instances=5), plan=plan, image=image,
                                  hostname=hostname)
    finally:
        Host.objects.update(is_enabled=True)
    wait_state(fleet, instance, "running", BOOT)
    return Instance.objects.select_related("host").get(pk=instance.pk)


def wait_state(fleet, instance: Instance, state: str, timeout: float) -> None:
    def check():
        current = Instance.objects.get(pk=instance.pk)
        assert current.state != "error", current.error
        return current.state == state

    wait_until(check, timeout, f"{instance.hostname} {state}", fleet)


def wait_move(fleet, operation: Operation, timeout: float = 300) -> Operation:
    def finished():
        operation.refresh_from_db()
        return operation.is_finished

    wait_until(finished, timeout, f"move {operation.pk} finished", fleet, interval=0.5)
    return operation


def fleet_host(fleet, name: str):
    return next(h for h in fleet.hosts if h.name == name)


def container_file(driver, uuid: str) -> Path:
    """The file as the host sees it inside the running container (read only: the container's
    root is an idmapped mount the host's root cannot create files in)."""
    status = driver.status(uuid)
    assert status.state is PowerState.RUNNING, status
    return Path(f"/proc/{status.pid}/root/root/moved.txt")


def shell(fleet, instance: Instance, prompt: str, timeout: float = 60) -> ConsoleClient:
    """The instance's console through the panel (its host's agent relays it)."""
    headers = session_headers(instance.customer.user, fleet.url)
    console = ConsoleClient(fleet.url.replace("http://", "ws://") + f"ws/instances/{instance.pk}/console/", headers)
    console.ws.send(b"\r")
    console.read_until(prompt.encode(), timeout)
    return console


def vm_shell(fleet, instance: Instance, boots: int) -> ConsoleClient:
    """A VM's console at the prompt of its ``boots``-th boot on its current host (a new viewer
    gets the host's whole scrollback first: every boot there since the VM came)."""
    headers = session_headers(instance.customer.user, fleet.url)
    console = ConsoleClient(fleet.url.replace("http://", "ws://") + f"ws/instances/{instance.pk}/console/", headers)
    for _ in range(boots):
        console.read_until(f"Berth tiny guest {instance.hostname} ready".encode(), BOOT)
    console.read_until(f"{instance.hostname}# ".encode(), BOOT)
    return console


def write_in(fleet, instance: Instance, prompt: str, text: str) -> None:
    console = shell(fleet, instance, prompt)
    console.run(f"echo {text} > /root/moved.txt; sync", timeout=30)
    assert console.run("cat /root/moved.txt", timeout=30).strip().endswith(text)
    console.close()


def test_a_running_container_moves_with_its_files_and_the_source_is_cleaned(setup):
    fleet, rows, admin = setup
    a, b = fleet.hosts
    instance = order_on(fleet, rows, a.name, plan=rows["plan"], image=rows["image"], hostname="mover-ct")
    uuid, slot, address = instance.uuid.hex, instance.uid_slot, instance.ipv4[0]
    write_in(fleet, instance, "mover-ct:/# ", "written-on-the-source")
    assert container_file(a.driver(), uuid).stat().st_uid == root_uid(a.driver().host, slot)

    started = time.monotonic()
    operation = wait_move(fleet, request_move(instance=instance, actor=admin, target_host=Host.objects.get(name=b.name)))
    took = time.monotonic() - started
    assert operation.state == "succeeded", (operation.error, fleet.logs())
    print(f"container moved in {took:.1f} s: {operation.progress}")

    instance.refresh_from_db()
    assert instance.host.name == b.name and instance.state == "running"
    assert instance.ipv4 and instance.ipv4[0] != address  # the target's own subnet
    assert IpAddress.objects.get(instance=instance).pool.host.name == b.name
    moved = container_file(b.driver(), uuid)
    assert moved.read_text() == "written-on-the-source\n"
    console = shell(fleet, instance, "mover-ct:/# ")  # b's agent relays its console now
    assert console.run("cat /root/moved.txt", timeout=30).strip().endswith("written-on-the-source")
    assert f"inet {instance.ipv4[0]}/24" in console.run("ip addr show eth0", timeout=30)  # b's subnet
    console.close()
    assert moved.stat().st_uid == root_uid(b.driver().host, instance.uid_slot)  # into b's uid range
    assert b.driver().status(uuid).state is PowerState.RUNNING
    # The source is clean: no container, no state dir, and the archive is gone too.
    assert a.driver().status(uuid).state is PowerState.ABSENT
    assert not ContainerPaths.of(a.driver().host, uuid).dir.exists()
    assert not Path(operation.params["path"]).exists()
    assert [s["step"] for s in operation.params["steps"]] == ["export", "import", "cleanup"]


def test_a_corrupted_archive_leaves_the_container_running_on_its_source(setup):
    fleet, rows, admin = setup
    a, b = fleet.hosts
    instance = order_on(fleet, rows, a.name, plan=rows["plan"], image=rows["image"], hostname="stays-ct")
    uuid = instance.uuid.hex
    write_in(fleet, instance, "stays-ct:/# ", "still-here")
    fleet.stop(f"worker-{b.name}")  # the import waits in b's queue while the archive is damaged
    try:
        operation = request_move(instance=instance, actor=admin, target_host=Host.objects.get(name=b.name))

        def exported():
            operation.refresh_from_db()
            assert not operation.is_finished, operation.error
            return operation.params.get("step") == "import"

        wait_until(exported, 120, "the export", fleet)
        archive = Path(operation.params["path"])
        with open(archive, "r+b") as f:  # one byte flipped in the middle
            f.seek(archive.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x55]))
    finally:
        fleet.start_worker(b)
    operation = wait_move(fleet, operation)
    assert operation.state == "failed"
    assert "The import on" in operation.error and "damaged or incomplete" in operation.error
    assert operation.error.endswith(f"stays-ct stays on {a.name}.")
    assert [(s["step"], s["state"]) for s in operation.params["steps"]] == [
        ("export", "succeeded"), ("import", "failed"), ("abort", "succeeded"), ("recover", "succeeded")]

    instance.refresh_from_db()
    assert instance.host.name == a.name and instance.state == "running"  # started again
    assert container_file(a.driver(), uuid).read_text() == "still-here\n"
    assert b.driver().status(uuid).state is PowerState.ABSENT  # nothing left on the target
    assert not ContainerPaths.of(b.driver().host, uuid).dir.exists()
    assert [ip.pool.host.name for ip in IpAddress.objects.filter(instance=instance)] == [a.name]
    assert not Path(operation.params["path"]).exists()


def test_a_running_vm_moves_with_what_was_written_to_its_disk(setup):
    fleet, rows, admin = setup
    a, b = fleet.hosts
    wait_until(lambda: Host.objects.filter(supports_vms=True).count() == 2, 120, "both hosts run VMs", fleet)
    plan = Plan.objects.create(name="vm-fleet", kind="vm", vcpus=1, memory_mib=256, disk_gib=1)
    image = Image.objects.create(name="tiny", kind="vm", path="tiny")
    instance = order_on(fleet, rows, a.name, plan=plan, image=image, hostname="mover-vm")
    console = vm_shell(fleet, instance, boots=1)
    console.run("echo moved-vm-disk > /dev/vda; sync", timeout=30)
    assert console.run("head -c 13 /dev/vda", timeout=30).strip().endswith("moved-vm-disk")
    console.close()

    operation = wait_move(fleet, request_move(instance=instance, actor=admin,
                                              target_host=Host.objects.get(name=b.name)), timeout=600)
    instance.refresh_from_db()
    assert operation.state == "succeeded", operation.error
    assert instance.host.name == b.name and instance.state == "running"
    console = vm_shell(fleet, instance, boots=1)  # the target's agent relays it now
    assert console.run("head -c 13 /dev/vda", timeout=30).strip().endswith("moved-vm-disk")
    console.close()
    assert a.driver("vm").status(instance.uuid.hex).state is PowerState.ABSENT
    assert b.driver("vm").status(instance.uuid.hex).state is PowerState.RUNNING
    assert not Path(operation.params["path"]).exists()
