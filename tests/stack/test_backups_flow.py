"""Issue 10 (snapshots and backups) against the real stack, through the API with a customer's
token: a snapshot of a real container taken, the file changed after it, the snapshot restored
and the file's old content read back; a backup restored into a new instance with the file
there; and a damaged archive refused with the instance and its data untouched. A real VM too:
a checkpoint restored (a byte written to its disk after it is gone), and a backup of it restored
into a new VM.

The stack runs with its own backup target (BERTH_BACKUP_TARGET) under /var/tmp, removed at the
end, so no archive lands in the checkout's var/."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from examples.billing_client import ApiError, BillingClient
from panel.api.services.tokens import create_token
from panel.backups.models import Backup
from panel.instances.models import Instance, Operation
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.conftest import destroy_instances, running_stack
from tests.stack.helpers import ConsoleClient, EventStream, host_leftovers, session_headers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def target():
    root = Path(tempfile.mkdtemp(prefix="berth-test-backups-", dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def backup_stack(django_db_setup, django_db_blocker, target):
    with running_stack(panel_env={"BERTH_BACKUP_TARGET": str(target)}) as running:
        yield running


@pytest.fixture
def world(backup_stack):
    rows = backup_stack.seed()
    customer = CustomerFactory()
    client = BillingClient(backup_stack.url, create_token(name="t", scope="customer", customer=customer)[1],
                           timeout=30)
    headers = session_headers(customer.user, backup_stack.url)
    events = EventStream(backup_stack.ws_url, headers)
    try:
        yield {"stack": backup_stack, "rows": rows, "customer": customer, "api": client,
               "headers": headers, "events": events}
    finally:
        events.close()
        destroy_instances(backup_stack)


def running_container(world, hostname: str) -> Instance:
    instance = order_instance(customer=world["customer"], plan=world["rows"]["plan"],
                              image=world["rows"]["image"], hostname=hostname)
    world["events"].wait_state(instance.pk, "running", timeout=60)
    return instance


def shell(world, instance: Instance, command: str, timeout: float = 60) -> str:
    """Run ``command`` on a fresh console (after a restore the container runs anew)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            console = ConsoleClient(f"{world['stack'].ws_url}ws/instances/{instance.pk}/console/",
                                    world["headers"])
            try:
                return console.run(command, timeout=15).strip()
            finally:
                console.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def follow(world, accepted: dict, timeout: float = 180) -> dict:
    operation = world["api"].wait_for_operation(accepted["operation"], timeout=timeout)
    return operation


def succeeded(world, accepted: dict, timeout: float = 180) -> dict:
    operation = follow(world, accepted, timeout)
    assert operation["state"] == "succeeded", f"{operation}\n{world['stack'].all_logs()}"
    return operation


def test_snapshot_restore_brings_back_the_old_file(world):
    api = world["api"]
    instance = running_container(world, "snap-1")
    assert shell(world, instance, "echo before > /root/f; sync; cat /root/f") == "before"

    taken = api.call("POST", f"services/{instance.pk}/snapshots/", {"name": "s1"})[1]
    assert taken["snapshot"]["state"] == "creating"
    succeeded(world, taken)
    [snapshot] = api.call("GET", f"services/{instance.pk}/snapshots/")[1]
    assert snapshot["name"] == "s1" and snapshot["state"] == "ready" and snapshot["size_bytes"] > 0

    shell(world, instance, "echo new > /root/g")  # short lines: a wrapped one is not found in the output
    assert shell(world, instance, "echo after > /root/f; sync; cat /root/f") == "after"
    restore = api.call("POST", f"services/{instance.pk}/snapshots/s1/restore/")[1]
    succeeded(world, restore)
    instance.refresh_from_db()
    assert instance.state == "running"
    assert shell(world, instance, "cat /root/f") == "before"
    assert shell(world, instance, "test -e /root/g || echo gone") == "gone"

    deleted = api.call("DELETE", f"services/{instance.pk}/snapshots/s1/")[1]
    succeeded(world, deleted)
    assert api.call("GET", f"services/{instance.pk}/snapshots/")[1] == []
    # Terminating removes the instance with whatever snapshots it has left.
    again = api.call("POST", f"services/{instance.pk}/snapshots/", {"name": "s2"})[1]
    succeeded(world, again)
    succeeded(world, api.action(instance.pk, "terminate"))
    assert api.call("GET", f"services/{instance.pk}/snapshots/")[1] == []
    assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}


def test_backup_restored_into_a_new_instance_and_a_damaged_archive_refused(world, target):
    api = world["api"]
    instance = running_container(world, "bak-1")
    assert shell(world, instance, "echo kept > /root/f; sync; cat /root/f") == "kept"

    started = time.monotonic()
    accepted = api.call("POST", f"services/{instance.pk}/backups/")[1]
    succeeded(world, accepted)
    took = time.monotonic() - started
    [listed] = api.call("GET", f"services/{instance.pk}/backups/")[1]
    backup = Backup.objects.get(pk=listed["id"])
    archive = Path(backup.path)
    assert archive.parent == target / instance.uuid.hex, backup.path
    assert listed["state"] == "ready" and listed["size_bytes"] == archive.stat().st_size
    assert listed["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    print(f"backup of a 1 GiB container disk: {archive.stat().st_size} bytes in {took:.1f} s")

    # Into a new instance: ordered, created, then the backup restored into it.
    shell(world, instance, "echo changed > /root/f; sync")
    restored = api.call("POST", f"services/{instance.pk}/backups/{backup.pk}/restore/",
                        {"new_service": {"hostname": "bak-copy"}})[1]
    assert restored["new_service"] is True and restored["service"] != instance.pk
    succeeded(world, restored)  # the creation
    copy = Instance.objects.get(pk=restored["service"])
    deadline = time.monotonic() + 60
    while not copy.operations.filter(action="restore_backup").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    restore_op = copy.operations.get(action="restore_backup")
    succeeded(world, {"operation": restore_op.pk})
    copy.refresh_from_db()
    assert copy.state == "running"
    assert shell(world, copy, "cat /root/f") == "kept"
    assert shell(world, copy, "hostname") == "bak-copy"

    # A damaged archive: the restore fails before anything changes.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    refused = api.call("POST", f"services/{instance.pk}/backups/{backup.pk}/restore/")[1]
    operation = follow(world, refused)
    assert operation["state"] == "failed", operation
    assert "damaged or incomplete" in operation["error"] and "nothing was changed" in operation["error"]
    instance.refresh_from_db()
    assert instance.state == "running"
    assert shell(world, instance, "cat /root/f") == "changed"

    # Deleting the backup removes its archive (through the host).
    assert api.call("DELETE", f"services/{instance.pk}/backups/{backup.pk}/")[0] == 204
    deadline = time.monotonic() + 30
    while archive.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not archive.parent.exists()  # archive, its .sha256 and the instance's emptied folder
    with pytest.raises(ApiError) as gone:
        api.call("GET", f"services/{instance.pk}/backups/{backup.pk}/")
    assert gone.value.status == 404
    assert Operation.objects.filter(instance__in=[instance, copy], state="failed").count() == 1


@pytest.mark.vm
def test_a_vm_snapshot_taken_and_restored_through_the_api(world):
    """A running VM: its snapshot keeps disk and memory (a checkpoint); a byte written to its
    disk after it is gone once the snapshot is restored, and the VM runs on."""
    stack, api = world["stack"], world["api"]
    stack.wait_for_vms()
    instance = order_instance(customer=world["customer"], plan=world["rows"]["vm_plan"],
                              image=world["rows"]["vm_image"], hostname="vm-snap")
    world["events"].wait_state(instance.pk, "running", timeout=180)
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", world["headers"])
    try:
        console.read_until(b"vm-snap# ", 180)
        console.run("echo first > /dev/vda; sync", timeout=60)
    finally:
        console.close()

    taken = api.call("POST", f"services/{instance.pk}/snapshots/", {"name": "vm1"})[1]
    succeeded(world, taken, timeout=300)
    [snapshot] = api.call("GET", f"services/{instance.pk}/snapshots/")[1]
    assert snapshot["state"] == "ready" and snapshot["with_memory"] is True, snapshot

    console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", world["headers"])
    try:
        console.run("echo second > /dev/vda; sync", timeout=60)
        assert "D[secon]" in console.run('echo "D[$(head -c 5 /dev/vda)]"', timeout=60)
    finally:
        console.close()
    succeeded(world, api.call("POST", f"services/{instance.pk}/snapshots/vm1/restore/")[1], timeout=300)
    instance.refresh_from_db()
    assert instance.state == "running"
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", world["headers"])
    try:
        assert "D[first]" in console.run('echo "D[$(head -c 5 /dev/vda)]"', timeout=90)
    finally:
        console.close()
    succeeded(world, api.call("DELETE", f"services/{instance.pk}/snapshots/vm1/")[1], timeout=300)
    assert api.call("GET", f"services/{instance.pk}/snapshots/")[1] == []

    # Backed up, then restored into a new VM: the copy's disk starts with what was written.
    succeeded(world, api.call("POST", f"services/{instance.pk}/backups/")[1], timeout=300)
    [backup] = api.call("GET", f"services/{instance.pk}/backups/")[1]
    assert backup["state"] == "ready" and backup["size_bytes"] > 0
    restored = api.call("POST", f"services/{instance.pk}/backups/{backup['id']}/restore/",
                        {"new_service": {"hostname": "vm-copy"}})[1]
    succeeded(world, restored, timeout=300)
    copy = Instance.objects.get(pk=restored["service"])
    deadline = time.monotonic() + 60
    while not copy.operations.filter(action="restore_backup").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    succeeded(world, {"operation": copy.operations.get(action="restore_backup").pk}, timeout=300)
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{copy.pk}/console/", world["headers"])
    try:
        # Its scrollback holds the prompt of the boot before the restore: wait for a shell.
        console.wait_for_shell(180)
        assert "D[first]" in console.run('echo "D[$(head -c 5 /dev/vda)]"', timeout=90)
    finally:
        console.close()
