"""Orders from the billing system, idempotent by its own service id (``external_id``).

A retry after a timeout must never make a second instance: the same id with the same order
returns the instance already made; the same id with a different order is a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from panel.accounts.models import Customer
from panel.catalog.models import Image, Plan
from panel.instances.models import Instance, Operation
from panel.instances.services.ordering import order_instance
from panel.instances.validators import validate_hostname


class IdempotencyConflict(Exception):
    """The external id is already used by a different order."""

    def __init__(self, instance: Instance, differences: dict[str, str]):
        super().__init__(
            f"The external_id {instance.external_id!r} already belongs to another order."
        )
        self.instance = instance
        self.differences = differences


@dataclass(frozen=True)
class OrderResult:
    instance: Instance
    created: bool


def _original_plan_id(instance: Instance) -> int:
    """The plan the instance was ordered with (a later change-plan records the old one)."""
    first_change = (
        instance.operations.filter(action=Operation.Action.CHANGE_PLAN)
        .order_by("created_at", "id")
        .first()
    )
    if first_change is not None and first_change.params.get("previous_plan"):
        return int(first_change.params["previous_plan"])
    return instance.plan_id


def _original_image_id(instance: Instance) -> int:
    """The image the instance was ordered with (an upgrade or rollback records the one before)."""
    first_switch = (
        instance.operations.filter(action__in=(Operation.Action.UPGRADE, Operation.Action.ROLLBACK))
        .order_by("created_at", "id")
        .first()
    )
    if first_switch is not None and first_switch.params.get("previous_image"):
        return int(first_switch.params["previous_image"])
    return instance.image_id


def _same_order(instance: Instance, *, customer: Customer, plan: Plan, image: Image,
                hostname: str, command: list[str] | None = None,
                env: dict[str, str] | None = None) -> OrderResult:
    differences = {}
    if (instance.app_command or None, instance.app_env or {}) != (command or None, env or {}):
        differences["command"] = "command or env differ from the service made with this external_id"
    if instance.customer_id != customer.pk:
        differences["customer"] = "differs from the service made with this external_id"
    if _original_plan_id(instance) != plan.pk:
        differences["plan"] = "differs from the service made with this external_id"
    if _original_image_id(instance) != image.pk:
        differences["image"] = "differs from the service made with this external_id"
    try:
        normalised = validate_hostname(hostname)
    except ValidationError:  # an invalid hostname cannot be the one the service was made with
        normalised = hostname
    if instance.hostname != normalised:
        differences["hostname"] = "differs from the service made with this external_id"
    if differences:
        raise IdempotencyConflict(instance, differences)
    return OrderResult(instance=instance, created=False)


def order_service(
    *,
    external_id: str,
    customer: Customer,
    plan: Plan,
    image: Image,
    hostname: str,
    actor=None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> OrderResult:
    """Order an instance for the billing system, once per ``external_id``.

    Raises IdempotencyConflict for a reused id with a different order, and whatever
    ``order_instance`` raises (InvalidOrder, QuotaExceeded, CapacityError) for a new one.
    """
    order = {"customer": customer, "plan": plan, "image": image, "hostname": hostname,
             "command": command, "env": env}
    existing = Instance.objects.filter(external_id=external_id).first()
    if existing is not None:
        return _same_order(existing, **order)
    try:
        with transaction.atomic():
            # order_instance locks the customer row too; taking it first means a concurrent
            # retry for the same customer waits here and then finds the committed instance
            # instead of failing the quota or capacity check the first request just used up.
            Customer.objects.select_for_update().filter(pk=customer.pk).first()
            existing = Instance.objects.filter(external_id=external_id).first()
            if existing is not None:
                return _same_order(existing, **order)
            instance = order_instance(
                customer=customer, plan=plan, image=image, hostname=hostname, actor=actor,
                source=Operation.Source.API, external_id=external_id, command=command, env=env,
            )
    except IntegrityError:
        # The unique constraint is the last line of defence (a retry under another customer
        # raced this one): read the winner's row and compare.
        existing = Instance.objects.filter(external_id=external_id).first()
        if existing is None:
            raise
        return _same_order(existing, **order)
    return OrderResult(instance=instance, created=True)
