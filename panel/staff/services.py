"""Admin-only operations on customers and instances: quotas, suspending a customer (every
instance suspended through the normal action path), bulk actions on many instances."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from panel.accounts.models import Customer
from panel.audit import services as audit
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.actions import request_action
from panel.instances.services.errors import (
    CapacityError,
    InstanceStateError,
    InvalidOrder,
    OperationInProgress,
    QuotaExceeded,
)

UI = Operation.Source.UI
# The reason an instance carries while its customer is suspended; unsuspending the customer
# brings back only these, not instances suspended for reasons of their own.
CUSTOMER_SUSPENDED = "Customer suspended"
# Actions an admin may apply to many instances at once.
BULK_ACTIONS = (
    Operation.Action.START, Operation.Action.STOP, Operation.Action.REBOOT,
    Operation.Action.SUSPEND, Operation.Action.UNSUSPEND, Operation.Action.TERMINATE,
)
REFUSALS = (InstanceStateError, OperationInProgress, InvalidOrder, QuotaExceeded, CapacityError)


@dataclass
class BulkResult:
    """What happened to each instance of a bulk request: queued, or why not."""

    queued: list[Instance] = field(default_factory=list)
    refused: list[tuple[Instance, str]] = field(default_factory=list)

    def summary(self, verb: str) -> str:
        text = f"{verb}: {len(self.queued)} queued"
        if self.refused:
            text += f", {len(self.refused)} not: " + "; ".join(f"{i.hostname}: {why}" for i, why in self.refused)
        return text + "."


def bulk_action(*, instances, action: str, actor, reason: str = "") -> BulkResult:
    """Request ``action`` on each instance through the normal path; one refusal never stops
    the others."""
    if action not in BULK_ACTIONS:
        raise ValueError(f"unknown bulk action {action!r}")
    result = BulkResult()
    for instance in instances:
        try:
            request_action(instance=instance, action=action, actor=actor, source=UI, reason=reason)
        except REFUSALS as exc:
            result.refused.append((instance, str(exc)))
        else:
            result.queued.append(instance)
    return result


def update_quotas(customer: Customer, *, max_instances: int, max_vcpus: int, max_memory_mib: int, actor) -> Customer:
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        before = {"max_instances": customer.max_instances, "max_vcpus": customer.max_vcpus,
                  "max_memory_mib": customer.max_memory_mib}
        customer.max_instances, customer.max_vcpus, customer.max_memory_mib = max_instances, max_vcpus, max_memory_mib
        customer.save(update_fields=["max_instances", "max_vcpus", "max_memory_mib"])
        audit.record(
            action="customer.quota", source=UI, actor=actor, target=customer,
            message=f"Quota of {customer}: {max_instances} instances, {max_vcpus} vCPUs, {max_memory_mib} MiB.",
            data={"before": before, "after": {"max_instances": max_instances, "max_vcpus": max_vcpus,
                                              "max_memory_mib": max_memory_mib}},
        )
    return customer


def suspend_customer(customer: Customer, *, reason: str, actor) -> BulkResult:
    """Suspend the customer (no new orders) and each of their running or stopped instances."""
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        customer.is_suspended = True
        customer.suspended_reason = reason
        customer.save(update_fields=["is_suspended", "suspended_reason"])
        audit.record(action="customer.suspend", source=UI, actor=actor, target=customer,
                     message=f"Suspended {customer}: {reason}")
    instances = Instance.objects.filter(customer=customer, state__in=(InstanceState.RUNNING, InstanceState.STOPPED))
    return bulk_action(instances=instances, action=Operation.Action.SUSPEND, actor=actor,
                       reason=f"{CUSTOMER_SUSPENDED}: {reason}")


def unsuspend_customer(customer: Customer, *, actor) -> BulkResult:
    """Lift the customer's suspension and bring back the instances it suspended."""
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        customer.is_suspended = False
        customer.suspended_reason = ""
        customer.save(update_fields=["is_suspended", "suspended_reason"])
        audit.record(action="customer.unsuspend", source=UI, actor=actor, target=customer,
                     message=f"Unsuspended {customer}.")
    instances = Instance.objects.filter(
        customer=customer, state=InstanceState.SUSPENDED, suspended_reason__startswith=CUSTOMER_SUSPENDED
    )
    return bulk_action(instances=instances, action=Operation.Action.UNSUSPEND, actor=actor,
                       reason="Customer unsuspended.")
