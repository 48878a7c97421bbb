"""A host worker killed (SIGKILL) in the middle of provisioning, for real: the operation is
retried to success or ends failed — never stuck in running — and nothing is left on the host.

The create is stopped at a known point by an image whose config is a FIFO: the worker has
claimed the operation's lease and reported it running, and the driver waits in open() for a
writer that never comes (it reads the config while validating, before it makes anything). The tests find exactly that process through /proc and kill it (or its whole
worker), then look at the operation, the instance and the host.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from django.conf import settings

from panel.catalog.models import Image
from panel.instances.models import Instance, Operation
from panel.instances.services import reaping
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.fault_tools import BlockingImage, LogMark, blocked_opening_fifo, wait_until
from tests.stack.helpers import host_leftovers
from workers import leases

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stuck_create(stack):
    """An order whose create is stuck half-way in the host worker; yields (instance, operation,
    the stuck pid, the image)."""
    rows = stack.seed()
    image = BlockingImage(stack.image_dir, "slowbox")
    row = Image.objects.create(name="slowbox", kind="container", path="slowbox")
    try:
        instance = order_instance(customer=CustomerFactory(), plan=rows["plan"], image=row,
                                  hostname="crash-1")
        operation = instance.operations.get()
        leader = stack.procs["host-worker"].pid
        [stuck] = wait_until(lambda: blocked_opening_fifo(leader), 60,
                             "the create never reached the image config", stack.all_logs)
        # The worker's "started" report goes through the panel queue: it lands a moment later.
        wait_until(lambda: _state(operation) == Operation.State.RUNNING, 20,
                   "the operation was never reported running", stack.all_logs)
        # The driver reads the image's config while validating the spec, before it makes
        # anything: the kill lands in the create's first step, with the lease already taken.
        yield instance, operation, stuck, image
    finally:
        image.unblock_future_reads()
        if stack.procs["host-worker"].poll() is not None:  # a failed test left it dead
            stack.restart("host-worker")
        else:  # a failed test left a pool process waiting on the FIFO for good: free the pool
            for pid in blocked_opening_fifo(stack.procs["host-worker"].pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(image.path)], check=False)


def test_worker_killed_mid_create_is_retried_to_success_on_restart(stack, stuck_create):
    instance, operation, _, image = stuck_create
    stack.stop("host-worker", signal.SIGKILL)  # the whole worker: main process and pool
    operation.refresh_from_db()
    assert operation.state == Operation.State.RUNNING

    image.unblock_future_reads()
    log = LogMark(stack, "host-worker")
    stack.restart("host-worker")
    wait_until(lambda: _finished(operation), 90, "the create was not retried", stack.all_logs)

    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == Operation.State.SUCCEEDED, operation.error
    assert instance.state == "running"
    assert "restored 1 message" in log.since() and "attempt 2" in log.since()
    _exactly_one_container(stack, instance)
    _terminate_and_check_clean(stack, instance)


def test_a_pool_process_killed_mid_create_is_retried_at_once(stack, stuck_create):
    instance, operation, stuck, image = stuck_create
    worker_pid = stack.procs["host-worker"].pid
    image.unblock_future_reads()
    log = LogMark(stack, "host-worker")
    subprocess.run(["kill", "-KILL", str(stuck)], check=True)  # only the pool child

    wait_until(lambda: _finished(operation), 60, "the create was not retried", stack.all_logs)
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == Operation.State.SUCCEEDED, operation.error
    assert instance.state == "running"
    assert stack.procs["host-worker"].pid == worker_pid and stack.procs["host-worker"].poll() is None
    assert "attempt 2" in log.since()
    _exactly_one_container(stack, instance)
    _terminate_and_check_clean(stack, instance)


def test_a_worker_that_does_not_come_back_fails_the_operation_for_good(stack, stuck_create):
    instance, operation, _, image = stuck_create
    stack.stop("host-worker", signal.SIGKILL)
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = leases.operation_key(stack.host_name, operation.pk)

    # Within the grace period the reaper waits: the worker may come back and take it over.
    assert reaping.reap_operations() == []
    operation.refresh_from_db()
    assert operation.state == Operation.State.RUNNING

    # The worker stays away past the grace period (aged here instead of waiting 90 s).
    assert client.delete(key + ":alive") == 1
    assert reaping.reap_operations() == [operation.pk]
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == Operation.State.FAILED
    assert "stopped while running this operation" in operation.error
    assert instance.state == "error"

    # When the worker does come back, the task is delivered again, and must not run.
    image.unblock_future_reads()
    log = LogMark(stack, "host-worker")
    stack.restart("host-worker")
    queue, unacked = f"host.{stack.host_name}", f"berth:host:{stack.host_name}:unacked"
    wait_until(lambda: "restored 1 message" in log.since(), 30,
               "the restarted worker did not restore the message", stack.all_logs)
    wait_until(lambda: client.llen(queue) == 0 and client.hlen(unacked) == 0, 30,
               "the restored message was not consumed", stack.all_logs)
    assert client.hget(key, "state") == b"abandoned"
    operation.refresh_from_db()
    assert operation.state == Operation.State.FAILED
    assert stack.host_driver().status(instance.uuid.hex).state == "absent"  # never launched, nothing made
    assert "attempt 2" not in log.since()
    _terminate_and_check_clean(stack, instance)  # the half-made container goes with it


# --- helpers -----------------------------------------------------------------------------

def _container_dir(stack, instance: Instance) -> Path:
    return Path(stack.host_env["BERTH_STATE_DIR"]) / "containers" / instance.uuid.hex


def _state(operation: Operation) -> str:
    operation.refresh_from_db()
    return operation.state


def _finished(operation: Operation) -> bool:
    operation.refresh_from_db()
    return operation.is_finished


def _exactly_one_container(stack, instance: Instance) -> None:
    uuid = instance.uuid.hex
    statuses = [s for s in stack.host_driver().list_instances() if s.uuid == uuid]
    assert [s.state for s in statuses] == ["running"]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert links.count(f"bv{uuid[:12]}") == 1
    leftovers = sorted(p.name for p in _container_dir(stack, instance).iterdir() if p.name.endswith(".new"))
    assert leftovers == []  # no half-written disk from the first attempt


def _terminate_and_check_clean(stack, instance: Instance) -> None:
    request_action(instance=instance, action="terminate")
    wait_until(lambda: Instance.objects.get(pk=instance.pk).state in ("terminated", "error"), 60,
               "terminate did not finish", stack.all_logs)
    assert Instance.objects.get(pk=instance.pk).state == "terminated"
    assert stack.host_driver().status(instance.uuid.hex).state == "absent"
    assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}
