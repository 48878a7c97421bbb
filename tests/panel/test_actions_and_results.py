import pytest

from panel.audit.models import AuditEntry
from panel.hosts.models import IpAddress
from panel.instances.models import InstanceState, Operation
from panel.instances.services import results
from panel.instances.services.actions import request_action
from panel.instances.services.errors import InstanceStateError, InvalidOrder, OperationInProgress
from panel.instances.services.ordering import order_instance
from tests.factories import PlanFactory

pytestmark = pytest.mark.django_db
S = InstanceState


@pytest.fixture
def instance(customer, plan, image, host, sent_tasks):
    return order_instance(customer=customer, plan=plan, image=image, hostname="web")


def finish(op, ok=True, **kwargs):
    results.record_operation_started(op.pk)
    results.record_operation_finished(op.pk, ok=ok, **kwargs)
    op.refresh_from_db()
    return op


def test_create_goes_pending_provisioning_running(instance):
    op = instance.operations.get()
    results.record_operation_started(op.pk)
    instance.refresh_from_db()
    assert instance.state == S.PROVISIONING
    results.record_operation_finished(op.pk, ok=True, power_state="running")
    instance.refresh_from_db()
    op.refresh_from_db()
    assert instance.state == S.RUNNING and op.state == "succeeded" and op.finished_at


def test_finished_report_overtaking_started_still_lands_in_running(instance):
    op = instance.operations.get()
    results.record_operation_finished(op.pk, ok=True, power_state="running")
    results.record_operation_started(op.pk)  # the late one changes nothing
    instance.refresh_from_db()
    op.refresh_from_db()
    assert (instance.state, op.state) == (S.RUNNING, "succeeded")
    assert instance.state_version == 2  # pending → provisioning → running


def test_reports_are_idempotent(instance):
    op = finish(instance.operations.get())
    finished_at = op.finished_at
    results.record_operation_started(op.pk)
    results.record_operation_finished(op.pk, ok=False, error="late duplicate")
    op.refresh_from_db()
    instance.refresh_from_db()
    assert (op.state, op.finished_at, instance.state) == ("succeeded", finished_at, S.RUNNING)


def test_failed_create_puts_the_instance_in_error_with_the_reason(instance):
    op = finish(instance.operations.get(), ok=False, error="image missing on host")
    instance.refresh_from_db()
    assert instance.state == S.ERROR and instance.error == "image missing on host"
    assert AuditEntry.objects.filter(action="operation.create.failed").exists()
    assert op.error == "image missing on host"


def test_stop_start_round_trip(instance):
    finish(instance.operations.get())
    stop = request_action(instance=instance, action="stop")
    finish(stop, power_state="stopped")
    instance.refresh_from_db()
    assert instance.state == S.STOPPED
    start = request_action(instance=instance, action="start")
    finish(start, power_state="running")
    instance.refresh_from_db()
    assert instance.state == S.RUNNING


def test_action_refused_in_wrong_state_writes_nothing(instance):
    with pytest.raises(InstanceStateError, match="Cannot start an instance that is pending"):
        request_action(instance=instance, action="start")
    assert instance.operations.count() == 1


def test_second_action_while_one_runs_is_refused(instance):
    finish(instance.operations.get())
    request_action(instance=instance, action="stop")
    with pytest.raises(OperationInProgress, match="stop is queued"):
        request_action(instance=instance, action="reboot")
    with pytest.raises(OperationInProgress):
        request_action(instance=instance, action="terminate")


def test_terminate_shows_terminating_then_releases_the_address(instance):
    finish(instance.operations.get())
    op = request_action(instance=instance, action="terminate")
    instance.refresh_from_db()
    assert instance.state == S.TERMINATING
    assert IpAddress.objects.filter(instance=instance).exists()
    finish(op, power_state="absent")
    instance.refresh_from_db()
    assert instance.state == S.TERMINATED and instance.terminated_at
    assert not IpAddress.objects.filter(instance=instance).exists()
    with pytest.raises(InstanceStateError):
        request_action(instance=instance, action="terminate")


def test_terminated_instance_frees_its_uid_slot(customer, plan, image, host, instance):
    finish(instance.operations.get())
    finish(request_action(instance=instance, action="terminate"))
    again = order_instance(customer=customer, plan=plan, image=image, hostname="again")
    assert again.uid_slot == instance.uid_slot
    assert again.ipv4 == ["10.99.0.2"]


def test_suspend_and_unsuspend_restore_the_previous_state(instance):
    finish(instance.operations.get())
    op = request_action(instance=instance, action="suspend", source="api", reason="unpaid invoice")
    finish(op, power_state="stopped")
    instance.refresh_from_db()
    assert instance.state == S.SUSPENDED and instance.suspended_reason == "unpaid invoice"
    with pytest.raises(InstanceStateError):
        request_action(instance=instance, action="start")
    op = request_action(instance=instance, action="unsuspend", source="api")
    assert op.params == {"start": True}
    finish(op, power_state="running")
    instance.refresh_from_db()
    assert instance.state == S.RUNNING and instance.suspended_reason == ""


def test_change_plan_checks_kind_and_reverts_on_failure(instance):
    finish(instance.operations.get())
    with pytest.raises(InvalidOrder):
        request_action(instance=instance, action="change_plan", params={"plan": PlanFactory(kind="vm").pk})
    bigger = PlanFactory(memory_mib=512)
    op = request_action(instance=instance, action="change_plan", params={"plan": bigger.pk})
    instance.refresh_from_db()
    assert instance.plan == bigger
    finish(op, ok=False, error="cgroup write failed", power_state="running")
    instance.refresh_from_db()
    assert instance.plan_id == op.params["previous_plan"]
    assert instance.state == S.RUNNING


def test_power_state_behind_our_back_is_recorded_with_a_reason(instance, host):
    finish(instance.operations.get())
    results.record_power_state(host_name=host.name, uuid=instance.uuid.hex, power_state="stopped",
                               reason="exited with status 0")
    instance.refresh_from_db()
    assert instance.state == S.STOPPED
    entry = AuditEntry.objects.get(action="instance.state_observed")
    assert "exited with status 0" in entry.message and entry.source == "system"


def test_power_state_is_ignored_while_an_operation_runs(instance, host):
    finish(instance.operations.get())
    request_action(instance=instance, action="stop")
    results.record_power_state(host_name=host.name, uuid=instance.uuid.hex, power_state="stopped")
    instance.refresh_from_db()
    assert instance.state == S.RUNNING


def test_reaper_fails_stale_operations(instance, settings):
    from datetime import timedelta

    from panel.instances.tasks import reap_stale_operations

    Operation.objects.update(created_at=instance.created_at - timedelta(hours=2))
    settings.BERTH_OPERATION_TIMEOUT = timedelta(minutes=15)
    assert reap_stale_operations() == 1
    instance.refresh_from_db()
    assert instance.state == S.ERROR
    assert "did not take this operation up within 15 minutes" in instance.operations.get().error
