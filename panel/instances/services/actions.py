"""Requesting actions on an existing instance (start, stop, reboot, rebuild, change plan,
suspend, unsuspend, terminate, and for application containers upgrade and rollback): checked
and recorded under the instance's row lock, sent to the host after commit."""

from __future__ import annotations

from django.db import transaction

from panel.audit import services as audit
from panel.catalog.models import Image, InstanceKind, Plan
from panel.hosts.models import Host
from panel.hosts.placement import capacity_problem, host_usage
from panel.instances.dispatch import dispatch_operation
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.errors import CapacityError, InvalidOrder, OperationInProgress
from panel.instances.states import ACTION_FROM_STATES, InstanceStateError, transition
from panel.realtime.publish import publish_operation

A = Operation.Action
S = InstanceState

# State the instance shows as soon as the action is accepted (others wait for the host).
STATE_ON_REQUEST = {A.TERMINATE: S.TERMINATING}


def active_operation(instance: Instance) -> Operation | None:
    return (
        instance.operations.filter(state__in=(Operation.State.QUEUED, Operation.State.RUNNING))
        .order_by("created_at")
        .first()
    )


def request_action(
    *,
    instance: Instance,
    action: str,
    actor=None,
    source: str = Operation.Source.UI,
    params: dict | None = None,
    reason: str = "",
) -> Operation:
    """Accept ``action`` for ``instance`` and queue it on its host.

    Raises InstanceStateError when the state forbids it and OperationInProgress when another
    operation has not finished; in both cases nothing is written.
    """
    if action in (A.CREATE, A.MOVE) or action not in ACTION_FROM_STATES:  # moves: services/moves.py
        raise ValueError(f"unknown action {action!r}")
    params = dict(params or {})
    with transaction.atomic():
        instance = (
            Instance.objects.select_for_update(of=("self",))
            .select_related("host", "plan")
            .get(pk=instance.pk)
        )
        if instance.state not in ACTION_FROM_STATES[action]:
            raise InstanceStateError(
                instance,
                f"Cannot {action.replace('_', ' ')} an instance that is {instance.state}.",
            )
        busy = active_operation(instance)
        if busy is not None:
            raise OperationInProgress(
                f"The instance is busy: {busy.get_action_display().lower()} is {busy.state}. Try again when it has finished."
            )
        if action == A.CHANGE_PLAN:
            params = _reserve_plan_change(instance, params)
        if action in (A.UPGRADE, A.ROLLBACK):
            params = _switch_image(instance, action, params)
        if action == A.UNSUSPEND:
            params["start"] = instance.state_before_suspend == S.RUNNING
        if action == A.SUSPEND:
            instance.state_before_suspend = instance.state
            instance.suspended_reason = reason
            instance.save(update_fields=["state_before_suspend", "suspended_reason", "updated_at"])
        operation = Operation.objects.create(
            instance=instance,
            action=action,
            source=source,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
            params=params,
        )
        if action in STATE_ON_REQUEST:
            # Through transition(), the one place that changes state (history, events, webhooks).
            instance.state = transition(instance.pk, STATE_ON_REQUEST[action]).state
        audit.record(
            action=f"instance.{action}",
            source=source,
            actor=actor,
            target=instance,
            message=reason or f"{operation.get_action_display()} requested.",
            data=params,
        )
        publish_operation(operation)
        dispatch_operation(operation)
    return operation


def _switch_image(instance: Instance, action: str, params: dict) -> dict:
    """Check the image an upgrade (or rollback) runs; switch the instance to it, keeping the
    one it leaves for a rollback. A failed operation switches back (results.py)."""
    current = instance.image
    if instance.kind != InstanceKind.CONTAINER or not current.is_app:
        raise InvalidOrder({"image": f"Only application containers (imported OCI images) can be "
                                     f"upgraded; {current.name} is a system image: rebuild reinstalls it."})
    if action == A.ROLLBACK:
        target = instance.previous_image
        if target is None:
            raise InstanceStateError(instance, "There is no earlier image to roll back to: "
                                               "the instance was never upgraded.")
    else:
        target = Image.objects.filter(pk=params.get("image") if isinstance(params.get("image"), int)
                                      else None, is_active=True).first()
        if target is None:
            raise InvalidOrder({"image": "Choose an image that exists and can be ordered."})
        if target.kind != InstanceKind.CONTAINER or not target.is_app:
            raise InvalidOrder({"image": f"{target.name} is not an application image; an upgrade "
                                         "runs another version of an application."})
        if target.pk == current.pk:
            raise InvalidOrder({"image": f"The instance already runs {current.name}."})
    params = {"image": target.pk, "previous_image": current.pk,
              "kept_previous_image": instance.previous_image_id,
              "start": instance.state != S.STOPPED}
    instance.previous_image, instance.image = current, target
    instance.save(update_fields=["previous_image", "image", "updated_at"])
    return params


def _reserve_plan_change(instance: Instance, params: dict) -> dict:
    """Check the new plan against kind, quota and the host's room; switch the instance to it."""
    from panel.instances.services.ordering import check_quota  # noqa: PLC0415 (cycle)

    try:
        plan = Plan.objects.get(pk=params.get("plan"), is_active=True)
    except (Plan.DoesNotExist, ValueError, TypeError):
        raise InvalidOrder({"plan": "Choose a plan that exists and can be ordered."}) from None
    if plan.kind != instance.kind:
        raise InvalidOrder({"plan": f"This plan is for {plan.get_kind_display().lower()}s."})
    if plan.pk == instance.plan_id:
        raise InvalidOrder({"plan": "The instance already has this plan."})
    old = instance.plan
    check_quota(
        instance.customer,
        vcpus=plan.vcpus - old.vcpus,
        memory_mib=plan.memory_mib - old.memory_mib,
        extra_instances=0,
    )
    host = Host.objects.select_for_update().get(pk=instance.host_id)
    usage = host_usage(host, exclude_instance_id=instance.pk)
    problem = capacity_problem(host, usage, vcpus=plan.vcpus, memory_mib=plan.memory_mib, disk_gib=plan.disk_gib)
    if problem:
        raise CapacityError(f"The host cannot fit this plan: {problem}.", {host.name: problem})
    instance.plan = plan
    instance.save(update_fields=["plan", "updated_at"])
    return {"plan": plan.pk, "previous_plan": old.pk}
