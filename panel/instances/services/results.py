"""What hosts report back: operations starting and finishing, and instances changing power
state behind Berth's back. Each report is idempotent: a retried or duplicated report changes
nothing the first one did not."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from panel.audit import services as audit
from panel.hosts.models import IpAddress
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.states import ALLOWED_TRANSITIONS, transition
from panel.realtime.publish import publish_operation

logger = logging.getLogger(__name__)

A = Operation.Action
S = InstanceState

STATE_WHILE_RUNNING = {A.CREATE: S.PROVISIONING, A.REBOOT: S.REBOOTING, A.REBUILD: S.PROVISIONING,
                       A.UPGRADE: S.PROVISIONING, A.ROLLBACK: S.PROVISIONING}

STATE_ON_SUCCESS = {
    A.CREATE: S.RUNNING,
    A.START: S.RUNNING,
    A.STOP: S.STOPPED,
    A.REBOOT: S.RUNNING,
    A.REBUILD: S.RUNNING,
    A.SUSPEND: S.SUSPENDED,
    A.TERMINATE: S.TERMINATED,
}

POWER_TO_STATE = {"running": S.RUNNING, "stopped": S.STOPPED}


def _lock_operation(operation_id: int) -> Operation | None:
    try:
        return (
            Operation.objects.select_for_update(of=("self",))
            .select_related("instance")
            .get(pk=operation_id)
        )
    except Operation.DoesNotExist:
        logger.warning("report for unknown operation %s ignored", operation_id)
        return None


def record_operation_started(operation_id: int, *, progress: str = "") -> None:
    with transaction.atomic():
        operation = _lock_operation(operation_id)
        if operation is None or operation.state != Operation.State.QUEUED:
            return
        operation.state = Operation.State.RUNNING
        operation.started_at = timezone.now()
        operation.progress = progress
        operation.save(update_fields=["state", "started_at", "progress"])
        during = STATE_WHILE_RUNNING.get(operation.action)
        if during and during in ALLOWED_TRANSITIONS[operation.instance.state]:
            transition(operation.instance_id, during)
        publish_operation(operation)


def record_operation_progress(operation_id: int, *, progress: str) -> None:
    with transaction.atomic():
        operation = _lock_operation(operation_id)
        if operation is None or operation.is_finished:
            return
        operation.progress = progress[:200]
        operation.save(update_fields=["progress"])
        publish_operation(operation)


# Called at the end of record_operation_finished, in its transaction, with the operation
# (finished), the instance (row locked) and the host's result (sizes, checksum, path of a
# snapshot or backup): how other apps (panel/backups) apply what is theirs.
FINISHED_HOOKS: list = []


def record_operation_finished(
    operation_id: int, *, ok: bool, error: str = "", power_state: str | None = None,
    detail: str = "", result: dict | None = None,
) -> None:
    """``detail`` is the host's note on how it went (e.g. "forced off after 10 s", "takes
    effect at the next stop and start"); a succeeded operation keeps it as its progress text.
    ``result``: what a snapshot or backup step made (``workers/backups.py``)."""
    with transaction.atomic():
        operation = _lock_operation(operation_id)
        if operation is None or operation.is_finished:
            return
        now = timezone.now()
        never_started = operation.state == Operation.State.QUEUED
        operation.state = Operation.State.SUCCEEDED if ok else Operation.State.FAILED
        operation.error = "" if ok else (error or "The host reported a failure without details.")
        operation.started_at = operation.started_at or now
        operation.finished_at = now
        operation.progress = detail[:200] if ok else ""
        operation.save(update_fields=["state", "error", "started_at", "finished_at", "progress"])
        instance = Instance.objects.select_for_update().get(pk=operation.instance_id)
        if never_started:
            # Reports are handled by several panel worker processes: the "finished" one can
            # overtake "started". Pass through the in-between state so every move is legal.
            during = STATE_WHILE_RUNNING.get(operation.action)
            if during and during in ALLOWED_TRANSITIONS[instance.state]:
                instance = transition(instance.pk, during)
        if ok:
            _apply_success(operation, instance, power_state)
        else:
            _apply_failure(operation, instance, power_state)
            audit.record(
                action=f"operation.{operation.action}.failed",
                source=Operation.Source.SYSTEM,
                target=instance,
                message=operation.error,
                data={"operation": operation.pk},
            )
        for hook in FINISHED_HOOKS:
            hook(operation, instance, ok=ok, result=result or {})
        publish_operation(operation)


def _apply_success(operation: Operation, instance: Instance, power_state: str | None) -> None:
    action = operation.action
    if action == A.TERMINATE:
        IpAddress.objects.filter(instance=instance).delete()
    if action == A.UNSUSPEND:
        target = instance.state_before_suspend or S.STOPPED
        instance.suspended_reason = ""
        instance.state_before_suspend = ""
        instance.save(update_fields=["suspended_reason", "state_before_suspend", "updated_at"])
        transition(instance.pk, POWER_TO_STATE.get(power_state or "", target))
        return
    target = STATE_ON_SUCCESS.get(action) or POWER_TO_STATE.get(power_state or "")
    if target:
        transition(instance.pk, target)


def _apply_failure(operation: Operation, instance: Instance, power_state: str | None) -> None:
    action = operation.action
    if action == A.CHANGE_PLAN and operation.params.get("previous_plan"):
        instance.plan_id = operation.params["previous_plan"]
        instance.save(update_fields=["plan", "updated_at"])
    if action in (A.UPGRADE, A.ROLLBACK) and operation.params.get("previous_image"):
        # The host runs the image before again (or never left it): so does the record.
        instance.image_id = operation.params["previous_image"]
        instance.previous_image_id = operation.params.get("kept_previous_image")
        instance.save(update_fields=["image", "previous_image", "updated_at"])
        observed = POWER_TO_STATE.get(power_state or "")
        if observed and (observed == instance.state or observed in ALLOWED_TRANSITIONS[instance.state]):
            transition(instance.pk, observed)
        else:
            transition(instance.pk, S.ERROR, error=operation.error)
        return
    if action in (A.CREATE, A.TERMINATE, A.REBUILD):
        transition(instance.pk, S.ERROR, error=operation.error)
        return
    observed = POWER_TO_STATE.get(power_state or "")
    if instance.state == S.REBOOTING:
        transition(instance.pk, observed or S.ERROR, error=operation.error)
    elif observed and observed in ALLOWED_TRANSITIONS[instance.state] and instance.state != S.SUSPENDED:
        transition(instance.pk, observed)


def record_power_state(*, host_name: str, uuid: str, power_state: str, reason: str = "",
                       unchanged_since: datetime | None = None) -> None:
    """The host saw an instance change state without an operation (crash, poweroff inside,
    killed or removed behind Berth's back). ``unchanged_since``: when the host looked; an
    instance changed after it is left alone (what the host saw may predate the change)."""
    from panel.instances.services.actions import active_operation  # noqa: PLC0415 (cycle)

    with transaction.atomic():
        instance = (
            Instance.objects.select_for_update()
            .filter(host__name=host_name, uuid=uuid)
            .exclude(state__in=(S.TERMINATED, S.TERMINATING, S.PENDING, S.PROVISIONING))
            .first()
        )
        if instance is None or active_operation(instance) is not None:
            return
        if unchanged_since is not None and instance.updated_at > unchanged_since:
            return
        if power_state == "absent":
            target, why = S.ERROR, reason or "The instance disappeared from its host."
        else:
            target = POWER_TO_STATE.get(power_state)
            why = reason or f"The instance is {power_state} on its host."
        if target is None or target == instance.state:
            return
        if instance.state == S.SUSPENDED and target == S.STOPPED:
            return  # a suspended instance is expected to be off
        if target not in ALLOWED_TRANSITIONS[instance.state]:
            return
        previous = instance.state
        transition(instance.pk, target, error=why)
        audit.record(
            action="instance.state_observed",
            source=Operation.Source.SYSTEM,
            target=instance,
            message=f"{previous} → {target}: {why}",
            data={"power_state": power_state},
        )
