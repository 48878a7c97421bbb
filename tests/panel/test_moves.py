"""Moving instances between hosts, panel side (``panel/instances/services/moves.py``): who may,
what is checked, the target's room reserved like an order's, the steps sent to each host in
turn, and every failure — at export, import, abort, recover, cleanup, a worker killed or never
there — ending with the instance whole on its source host and the operation saying why."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from panel.audit.models import AuditEntry
from panel.hosts.models import Host, IpAddress
from panel.hosts.placement import fleet_usage, free_uid_slot
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services import moves, reaping, results
from panel.instances.services.actions import request_action
from panel.instances.services.errors import CapacityError
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, HostFactory, PlanFactory
from workers import leases
from workers.backups import lease_id

pytestmark = pytest.mark.django_db
S = InstanceState
SHA = "ab" * 32


@pytest.fixture
def admin(db):
    return get_user_model().objects.create_user("move-admin", password="x" * 20, is_staff=True)


@pytest.fixture
def hosts(db):
    a = HostFactory(name="src", pool="10.91.0.0/24", uid_slots=8)
    b = HostFactory(name="dst", pool="10.92.0.0/24", uid_slots=8)
    return a, b


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run the on-commit callbacks (the tasks sent to hosts) of what happens inside."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def make_instance(customer, plan, image, host, *, state=S.RUNNING, hostname="web") -> Instance:
    Host.objects.exclude(pk=host.pk).update(is_enabled=False)
    try:
        instance = order_instance(customer=customer, plan=plan, image=image, hostname=hostname)
    finally:
        Host.objects.exclude(pk=host.pk).update(is_enabled=True)
    op = instance.operations.get()
    results.record_operation_finished(op.pk, ok=True, power_state="running")
    if state != S.RUNNING:
        Instance.objects.filter(pk=instance.pk).update(state=state)
    instance.refresh_from_db()
    assert instance.host_id == host.pk
    return instance


@pytest.fixture
def instance(customer, plan, image, hosts, sent_tasks):
    return make_instance(customer, plan, image, hosts[0])


def report(op, step, host, event="finished", **kwargs):
    moves.record_step(op.pk, step=step, host_name=host.name, event=event, **kwargs)
    op.refresh_from_db()
    return op


def host_tasks(sent_tasks):
    return [t for t in sent_tasks if t["name"] == "berth.host.run_operation" and t["kwargs"]["action"] == "migrate"]


def last_step(sent_tasks):
    task = host_tasks(sent_tasks)[-1]
    return task["queue"], task["kwargs"]["params"]["step"], task["kwargs"]


# --- who and what -------------------------------------------------------------------------------

def test_only_staff_may_move(instance, hosts):
    with pytest.raises(moves.MoveError, match="Only staff"):
        moves.request_move(instance=instance, actor=instance.customer.user, target_host=hosts[1])
    with pytest.raises(moves.MoveError, match="Only staff"):
        moves.request_move(instance=instance, actor=None)
    assert not Operation.objects.filter(action="move").exists()


@pytest.mark.parametrize("change, message", [
    ({"is_draining": True}, "the host is draining"),
    ({"is_enabled": False}, "the host is disabled"),
    ({"status": "offline"}, "the host is offline"),
    ({"supports_containers": False}, "the host does not run containers"),
    ({"cpus": 0}, "not enough vCPUs"),
])
def test_an_unfit_target_is_refused_and_nothing_is_written(instance, hosts, admin, change, message):
    Host.objects.filter(pk=hosts[1].pk).update(**change)
    with pytest.raises(moves.MoveError, match=message) as refused:
        moves.request_move(instance=instance, actor=admin, target_host=hosts[1].pk)
    assert refused.value.field == "host"
    assert not Operation.objects.filter(action="move").exists()
    assert list(instance.ip_addresses.values_list("pool__host__name", flat=True)) == ["src"]


def test_the_same_host_a_missing_host_or_a_plan_elsewhere_are_refused(instance, hosts, admin, plan):
    with pytest.raises(moves.MoveError, match="it is already there"):
        moves.request_move(instance=instance, actor=admin, target_host=hosts[0])
    with pytest.raises(moves.MoveError, match="Choose a host that exists"):
        moves.request_move(instance=instance, actor=admin, target_host=999999)
    plan.hosts.set([hosts[0]])
    with pytest.raises(moves.MoveError, match=f"plan {plan.name} is not allowed on it"):
        moves.request_move(instance=instance, actor=admin, target_host=hosts[1])
    with pytest.raises(moves.MoveError, match="no other host web may run on"):
        moves.request_move(instance=instance, actor=admin)


@pytest.mark.parametrize("state", [S.ERROR, S.PENDING, S.TERMINATING])
def test_only_running_stopped_or_suspended_instances_move(customer, plan, image, hosts, admin, sent_tasks, state):
    instance = make_instance(customer, plan, image, hosts[0], state=state)
    with pytest.raises(moves.MoveError, match=f"web is {state}"):
        moves.request_move(instance=instance, actor=admin, target_host=hosts[1])


def test_a_busy_instance_or_an_offline_source_is_refused(instance, hosts, admin):
    request_action(instance=instance, action="reboot")
    with pytest.raises(moves.MoveError, match="busy: reboot is queued"):
        moves.request_move(instance=instance, actor=admin, target_host=hosts[1])
    Operation.objects.filter(action="reboot").update(state="succeeded")
    Host.objects.filter(pk=hosts[0].pk).update(status="offline")
    with pytest.raises(moves.MoveError, match="Host src is offline"):
        moves.request_move(instance=instance, actor=admin, target_host=hosts[1])


def test_moves_do_not_go_through_request_action(instance):
    with pytest.raises(ValueError):
        request_action(instance=instance, action="move")


# --- reservation ----------------------------------------------------------------------------------

def test_the_target_is_reserved_like_an_order(instance, hosts, admin, customer, plan, image, commit):
    src, dst = hosts
    Host.objects.filter(pk=dst.pk).update(cpus=1)  # room for exactly one 1-vCPU instance
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
    assert op.params["reserve_host"] == dst.pk
    assert fleet_usage([dst.pk])[dst.pk].vcpus == 1  # counted before the instance is there
    # An order cannot take the reserved room …
    Host.objects.filter(pk=src.pk).update(is_enabled=False)
    with pytest.raises(CapacityError, match="No host has room"):
        order_instance(customer=customer, plan=plan, image=image, hostname="late")
    # … nor a second move.
    Host.objects.filter(pk=src.pk).update(is_enabled=True)
    other = make_instance(CustomerFactory(), plan, image, src, hostname="other")
    with pytest.raises(moves.MoveError, match="not enough vCPUs"):
        moves.request_move(instance=other, actor=admin, target_host=dst)
    assert Operation.objects.filter(action="move").count() == 1


def test_address_and_uid_range_are_kept_when_the_target_allows(customer, plan, image, admin, sent_tasks, commit):
    src = HostFactory(name="a", pool="10.93.0.0/24", uid_slots=8)
    dst = HostFactory(name="b", pool="10.93.0.0/24", uid_slots=8)  # same subnet, another bridge
    instance = make_instance(customer, plan, image, src)
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
    assert op.params["target_address"] == op.params["source_address"] == instance.ipv4[0]
    assert op.params["target_uid_slot"] == instance.uid_slot
    assert free_uid_slot(dst) != instance.uid_slot  # reserved for the move
    queue, step, task = last_step(sent_tasks)
    assert task["spec"]["network"]["address"] == instance.ipv4[0]


def test_address_and_uid_range_are_reallocated_when_taken(customer, plan, image, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    instance = make_instance(customer, plan, image, src)
    squatter = make_instance(CustomerFactory(), plan, image, dst, hostname="squat")
    assert squatter.uid_slot == instance.uid_slot == 0
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
    assert op.params["target_address"].startswith("10.92.0.") and op.params["target_address"] != squatter.ipv4[0]
    assert op.params["target_uid_slot"] == 1
    assert set(IpAddress.objects.filter(instance=instance).values_list("pool__host__name", flat=True)) == {"src", "dst"}


def test_placement_chooses_another_host(instance, hosts, admin, commit, sent_tasks):
    HostFactory(name="full", pool="10.94.0.0/24", cpus=0)
    with commit():
        op = moves.request_move(instance=instance, actor=admin)
    assert op.params["target_name"] == "dst"
    Host.objects.filter(name="dst").update(is_draining=True)
    Operation.objects.filter(pk=op.pk).update(state="failed")
    with pytest.raises(moves.MoveError, match=r"No other host has room for web right now\. \(src: the instance is on this host; dst: draining; full: not enough vCPUs"):
        moves.request_move(instance=instance, actor=admin)


# --- the steps --------------------------------------------------------------------------------------

def test_a_running_instance_moves_step_by_step(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    source_address, slot = instance.ipv4[0], instance.uid_slot
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
    queue, step, task = last_step(sent_tasks)
    assert (queue, step) == ("host.src", "export")
    assert task["params"] == {"step": "export", "target": str(settings.BERTH_BACKUP_TARGET),
                              "archive": f"move-{op.pk}"}
    assert task["spec"]["network"]["address"] == source_address and task["spec"]["network"]["bridge"] == src.bridge

    op = report(op, "export", src, event="started")
    assert op.state == "running" and op.progress == "Exporting from src"
    op = report(op, "export", src, event="progress", progress="Writing the archive: 40 %")
    assert op.progress == "Exporting from src: Writing the archive: 40 %"
    path = f"{settings.BERTH_BACKUP_TARGET}/{instance.uuid.hex}/move-{op.pk}.tar.zst"
    with commit():
        op = report(op, "export", src, ok=True, power_state="stopped",
                    result={"path": path, "sha256": SHA, "size_bytes": 5 << 20, "was_running": True})
    instance.refresh_from_db()
    assert instance.state == S.STOPPED and instance.host_id == src.pk  # stopped for the copy
    queue, step, task = last_step(sent_tasks)
    assert (queue, step) == ("host.dst", "import")
    assert task["params"] == {"step": "import", "path": path, "sha256": SHA, "keep_running": True}
    target_address = op.params["target_address"]
    assert task["spec"]["network"] == {**task["spec"]["network"], "address": target_address,
                                       "bridge": dst.bridge, "gateway": "10.92.0.1"}
    assert task["spec"]["uuid"] == instance.uuid.hex and task["spec"]["network"]["mac"] == instance.mac

    with commit():
        op = report(op, "import", dst, ok=True, power_state="running")
    instance.refresh_from_db()
    assert (instance.host_id, instance.state, instance.ipv4) == (dst.pk, S.RUNNING, [target_address])
    assert "reserve_host" not in op.params and op.state == "running"
    assert fleet_usage([dst.pk])[dst.pk].vcpus == 1  # the instance itself now, not twice
    queue, step, task = last_step(sent_tasks)
    assert (queue, step) == ("host.src", "cleanup")  # only once the target runs it
    assert task["params"] == {"step": "cleanup", "path": path}
    assert task["spec"]["network"]["address"] == source_address and task["spec"]["uid_slot"] == slot

    op = report(op, "cleanup", src, ok=True, power_state="absent")
    assert op.state == "succeeded" and op.progress.startswith("Moved from src to dst in")
    assert "5.0 MiB copied" in op.progress
    assert [s["step"] for s in op.params["steps"]] == ["export", "import", "cleanup"]
    assert {s["state"] for s in op.params["steps"]} == {"succeeded"}
    assert AuditEntry.objects.filter(action="instance.moved").exists()


def test_snapshots_stay_behind_with_the_source_copy_and_their_rows_go_with_a_move(
        instance, hosts, admin, sent_tasks, commit):
    from panel.backups.models import Snapshot

    src, dst = hosts
    Snapshot.objects.create(instance=instance, name="before-upgrade", state="ready")
    failed = moved_to_import(instance, hosts, admin, commit)
    with commit():
        report(failed, "import", dst, ok=False, error="no room")
        report(failed, "abort", dst, ok=True, power_state="absent")
        report(failed, "recover", src, ok=True, power_state="running")
    failed.refresh_from_db()
    assert failed.state == "failed"
    assert instance.snapshots.count() == 1  # still on the source, which still has its disk

    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
        op = report(op, "export", src, ok=True, power_state="stopped", result={"sha256": SHA})
        op = report(op, "import", dst, ok=True, power_state="running")
        assert instance.snapshots.count() == 1  # until the source's copy is cleaned up
        op = report(op, "cleanup", src, ok=True, power_state="absent")
    assert op.state == "succeeded"
    assert instance.snapshots.count() == 0


def test_a_stopped_instance_stays_stopped(customer, plan, image, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    instance = make_instance(customer, plan, image, src, state=S.STOPPED)
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
        op = report(op, "export", src, ok=True, power_state="stopped", result={"sha256": SHA})
    assert last_step(sent_tasks)[2]["params"]["keep_running"] is False
    with commit():
        op = report(op, "import", dst, ok=True, power_state="stopped")
    instance.refresh_from_db()
    assert (instance.host_id, instance.state) == (dst.pk, S.STOPPED)


def moved_to_import(instance, hosts, admin, commit):
    src, dst = hosts
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
        return report(op, "export", src, ok=True, power_state="stopped",
                      result={"path": "/x/y.tar.zst", "sha256": SHA})


def assert_whole_on_source(instance, op, src, *, reason: str, state=S.RUNNING):
    op.refresh_from_db()
    instance.refresh_from_db()
    assert op.state == "failed"
    assert reason in op.error and op.error.endswith("web stays on src.")
    assert (instance.host_id, instance.state) == (src.pk, state)
    assert list(instance.ip_addresses.values_list("pool__host__name", flat=True)) == ["src"]
    assert moves.reservations([h.pk for h in Host.objects.all()]) == []
    assert AuditEntry.objects.filter(action="operation.move.failed", message=op.error).exists()


def test_a_failed_export_recovers_on_the_source(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
        op = report(op, "export", src, ok=False, power_state="running",
                    error="cannot write the archive to /b: No space left on device (the backup target is full)")
    queue, step, task = last_step(sent_tasks)
    assert (queue, step) == ("host.src", "recover")  # the target was never touched: no abort
    assert task["params"] == {"step": "recover", "path": op.params["path"], "start": True}
    op = report(op, "recover", src, ok=True, power_state="running")
    assert_whole_on_source(instance, op, src, reason="The export on src failed: cannot write the archive")


def test_a_checksum_mismatch_at_import_aborts_the_target_then_recovers(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    op = moved_to_import(instance, hosts, admin, commit)
    with commit():
        op = report(op, "import", dst, ok=False, power_state="absent",
                    error="the archive y.tar.zst is damaged or incomplete (…); nothing was changed")
    queue, step, task = last_step(sent_tasks)
    assert (queue, step, task["params"]) == ("host.dst", "abort", {"step": "abort"})
    assert task["spec"]["network"]["bridge"] == dst.bridge
    assert op.progress == "Cleaning dst after the failure"
    with commit():
        op = report(op, "abort", dst, ok=True, power_state="absent")
    queue, step, task = last_step(sent_tasks)
    assert (queue, step) == ("host.src", "recover") and task["params"]["start"] is True
    op = report(op, "recover", src, ok=True, power_state="running")
    assert_whole_on_source(instance, op, src, reason="The import on dst failed: the archive y.tar.zst is damaged")
    assert [(s["step"], s["state"]) for s in op.params["steps"]] == [
        ("export", "succeeded"), ("import", "failed"), ("abort", "succeeded"), ("recover", "succeeded")]


def test_failures_of_abort_and_recover_are_added_to_the_reason(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    op = moved_to_import(instance, hosts, admin, commit)
    with commit():
        op = report(op, "import", dst, ok=False, error="not enough space on the host to unpack the archive")
        op = report(op, "abort", dst, ok=False, error="device busy")
        op = report(op, "recover", src, ok=False, power_state="stopped", error="cannot start: boom")
    assert_whole_on_source(instance, op, src, state=S.STOPPED,
                           reason="The import on dst failed: not enough space on the host to unpack the archive. "
                                  "Cleaning dst failed too (device busy)")
    assert "Restoring the instance on src failed too: cannot start: boom. web stays on src." in op.error


def test_a_failed_cleanup_still_ends_the_move_on_the_target(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    op = moved_to_import(instance, hosts, admin, commit)
    with commit():
        op = report(op, "import", dst, ok=True, power_state="running")
    op = report(op, "cleanup", src, ok=False, error="device or resource busy")
    instance.refresh_from_db()
    assert op.state == "succeeded" and "the old copy on src was not removed: device or resource busy" in op.progress
    assert instance.host_id == dst.pk
    assert AuditEntry.objects.filter(action="instance.move.cleanup_failed").exists()


def test_reports_of_another_step_or_from_another_host_change_nothing(instance, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    with commit():
        op = moves.request_move(instance=instance, actor=admin, target_host=dst)
    op = report(op, "export", dst, ok=True, result={"sha256": SHA})  # dst cannot speak for src
    op = report(op, "import", src, ok=True)  # not the current step
    assert op.state == "queued" and op.params["step"] == "export" and len(host_tasks(sent_tasks)) == 1
    with commit():
        op = report(op, "export", src, ok=True, power_state="stopped", result={"sha256": SHA})
        op = report(op, "export", src, ok=True, power_state="stopped", result={"sha256": SHA})  # duplicate
    assert [t["kwargs"]["params"]["step"] for t in host_tasks(sent_tasks)] == ["export", "import"]


def test_step_reports_are_host_reports(instance):
    from panel.hosts.reports import REPORT_TASKS

    assert "berth.panel.step_report" in REPORT_TASKS


# --- the reaper -------------------------------------------------------------------------------------

@pytest.fixture
def lease_redis():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    for key in client.scan_iter("berth:host:*:op:*"):
        client.delete(key)
    client.close()


def test_a_worker_killed_during_the_import_fails_the_move_cleanly(instance, hosts, admin, sent_tasks, commit,
                                                                   lease_redis):
    src, dst = hosts
    op = moved_to_import(instance, hosts, admin, commit)
    op = report(op, "import", dst, event="started")
    lease = leases.OperationLease(lease_redis, dst.name, lease_id(op.pk, "import"))
    assert lease.claim().state == leases.CLAIMED
    with commit():
        assert reaping.reap_operations() == []  # the worker renews: it is working
    # It dies: its lease is not renewed any more (the markers expire).
    lease_redis.delete(lease.keys[1], lease.keys[2])
    with commit():
        assert reaping.reap_operations() == []  # the move goes on: abort, then recover
    op.refresh_from_db()
    assert "the worker on host dst stopped while running it" in op.params["failure"]
    assert last_step(sent_tasks)[:2] == ("host.dst", "abort")
    # A late delivery of the import can never run now.
    assert leases.OperationLease(lease_redis, dst.name, lease_id(op.pk, "import")).claim().state == leases.ABANDONED
    with commit():
        op = report(op, "abort", dst, ok=True)
    op = report(op, "recover", src, ok=True, power_state="running")
    assert_whole_on_source(instance, op, src, reason="The import on dst failed: the worker on host dst stopped")


def test_a_step_no_worker_takes_up_times_out_and_a_lost_report_is_applied(instance, hosts, admin, sent_tasks,
                                                                          commit, lease_redis):
    src, dst = hosts
    op = moved_to_import(instance, hosts, admin, commit)
    later = timezone.now() + settings.BERTH_OPERATION_TIMEOUT + timedelta(seconds=1)
    with commit():
        reaping.reap_operations(now=later)
    op.refresh_from_db()
    assert "host dst did not take it up within 15 minutes" in op.params["failure"]
    assert op.params["step"] == "abort"
    # The abort ran, but its report was lost (a Redis restart): the reaper applies it.
    lease = leases.OperationLease(lease_redis, dst.name, lease_id(op.pk, "abort"))
    lease.claim()
    lease.finish({"operation_id": op.pk, "step": "abort", "host_name": dst.name, "event": "finished",
                  "ok": True, "power_state": "absent", "result": {}})
    with commit():
        reaping.reap_operations()
    op.refresh_from_db()
    assert op.params["step"] == "recover"
    op = report(op, "recover", src, ok=True, power_state="stopped")
    assert_whole_on_source(instance, op, src, state=S.STOPPED, reason="did not take it up")


# --- evacuating a host ------------------------------------------------------------------------------

def test_evacuate_needs_a_draining_host(hosts, admin):
    with pytest.raises(moves.MoveError, match="Drain src first"):
        moves.evacuate_host(hosts[0], actor=admin)


def test_evacuate_moves_each_instance_and_says_why_one_cannot(customer, image, hosts, admin, sent_tasks, commit):
    src, dst = hosts
    plan = PlanFactory(vcpus=1, memory_mib=256)
    running = make_instance(customer, plan, image, src, hostname="one")
    stopped = make_instance(customer, plan, image, src, hostname="two", state=S.STOPPED)
    broken = make_instance(customer, plan, image, src, hostname="three", state=S.ERROR)
    Host.objects.filter(pk=src.pk).update(is_draining=True)
    src.refresh_from_db()
    with commit():
        ops = moves.evacuate_host(src, actor=admin)
    by_name = {op.instance.hostname: op for op in ops}
    assert {n: op.state for n, op in by_name.items()} == {"one": "queued", "two": "queued", "three": "failed"}
    assert by_name["three"].error == "Not moved: three is error: only running, stopped or suspended instances can be moved."
    assert {t["queue"] for t in host_tasks(sent_tasks)} == {"host.src"}
    assert [op.instance.hostname for op in moves.evacuation_progress(src)] == ["one", "three", "two"]
    assert moves.reservations([dst.pk]) and len(moves.reservations([dst.pk])) == 2
    for instance in (running, stopped, broken):
        instance.refresh_from_db()
        assert instance.host_id == src.pk


# --- staff pages ------------------------------------------------------------------------------------

def test_staff_move_page(client, instance, hosts, admin, sent_tasks):
    src, dst = hosts
    url = reverse("staff-instance-move", args=[instance.pk])
    client.force_login(instance.customer.user)
    assert client.get(url).status_code == 403
    assert client.post(url, {"host": ""}).status_code == 403
    assert b"staff-move-link" not in client.get(reverse("instance-detail", args=[instance.pk])).content
    client.force_login(admin)
    page = client.get(url)
    assert page.status_code == 200 and b"stopped for the copy and started again on the target" in page.content
    detail = client.get(reverse("instance-detail", args=[instance.pk]))
    assert b'id="staff-move-link"' in detail.content
    Host.objects.filter(pk=dst.pk).update(is_draining=True)
    refused = client.post(url, {"host": str(dst.pk)})
    assert refused.status_code == 200 and b"web cannot move to dst: the host is draining." in refused.content
    assert b'class="field-error"' in refused.content
    assert client.post(url, {"host": "nonsense"}).status_code == 200  # a bad choice is a form error
    Host.objects.filter(pk=dst.pk).update(is_draining=False)
    moved = client.post(url, {"host": ""})
    assert moved.status_code == 302 and Operation.objects.filter(action="move", instance=instance).exists()


def test_staff_host_page_evacuates_and_lists_progress(client, instance, hosts, admin, sent_tasks):
    src, _dst = hosts
    client.force_login(admin)
    page = client.get(reverse("staff-host-detail", args=[src.pk]))
    assert b"Evacuate src" not in page.content
    Host.objects.filter(pk=src.pk).update(is_draining=True)
    assert b"Evacuate src" in client.get(reverse("staff-host-detail", args=[src.pk])).content
    response = client.post(reverse("staff-host-evacuate", args=[src.pk]), follow=True)
    assert b"Evacuating src: 1 move(s) queued." in response.content
    part = client.get(reverse("staff-host-moves", args=[src.pk]))
    assert b"web" in part.content and b"dst" in part.content and b"Exporting from src" in part.content
    client.force_login(instance.customer.user)
    assert client.post(reverse("staff-host-evacuate", args=[src.pk])).status_code == 403
