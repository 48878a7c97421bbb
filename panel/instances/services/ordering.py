"""Ordering an instance: quota, placement and every reservation in one transaction, the host
task queued only after it commits."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum

from panel.accounts.models import Customer
from panel.audit import services as audit
from panel.catalog.models import Image, Plan
from panel.hosts.models import IpAddress
from panel.hosts.placement import place
from panel.instances.dispatch import dispatch_operation
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.errors import InvalidOrder, QuotaExceeded
from panel.instances.validators import validate_hostname
from panel.realtime.publish import publish_instance


def _random_mac() -> str:
    # 52:54:00 is QEMU/KVM's prefix; the locally administered range keeps clear of real NICs.
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _check_order(*, plan: Plan, image: Image, hostname: str) -> str:
    errors: dict[str, str] = {}
    try:
        hostname = validate_hostname(hostname)
    except ValidationError as exc:
        errors["hostname"] = exc.messages[0]
    if not plan.is_active:
        errors["plan"] = "This plan can no longer be ordered."
    if not image.is_active:
        errors["image"] = "This image can no longer be ordered."
    elif image.kind != plan.kind:
        errors["image"] = f"The image {image.name} is for {image.get_kind_display().lower()}s, but the plan is for {plan.get_kind_display().lower()}s."
    if errors:
        raise InvalidOrder(errors)
    return hostname


def check_quota(customer: Customer, *, vcpus: int, memory_mib: int, extra_instances: int = 1) -> None:
    if customer.is_suspended:
        raise QuotaExceeded("Your account is suspended; contact your provider.")
    live = Instance.objects.live().filter(customer=customer)
    used = live.aggregate(vcpus=Sum("plan__vcpus"), memory=Sum("plan__memory_mib"))
    count = live.count()
    if count + extra_instances > customer.max_instances:
        raise QuotaExceeded(f"Your quota allows {customer.max_instances} instances and you have {count}.")
    if (used["vcpus"] or 0) + vcpus > customer.max_vcpus:
        raise QuotaExceeded(
            f"Your quota allows {customer.max_vcpus} vCPUs and {used['vcpus'] or 0} are in use."
        )
    if (used["memory"] or 0) + memory_mib > customer.max_memory_mib:
        raise QuotaExceeded(
            f"Your quota allows {customer.max_memory_mib} MiB of memory and {used['memory'] or 0} MiB are in use."
        )


def order_instance(
    *,
    customer: Customer,
    plan: Plan,
    image: Image,
    hostname: str,
    actor=None,
    source: str = Operation.Source.UI,
    external_id: str | None = None,
    ssh_keys: str = "",
    root_password_hash: str = "",
) -> Instance:
    """Place and reserve a new instance, and queue its creation on the chosen host.

    Raises InvalidOrder, QuotaExceeded or CapacityError; nothing is written when it does.
    """
    hostname = _check_order(plan=plan, image=image, hostname=hostname)
    with transaction.atomic():
        # Locking the customer row serialises one customer's orders, so two cannot both pass
        # the quota check; placement then locks the host rows for the same reason.
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        check_quota(customer, vcpus=plan.vcpus, memory_mib=plan.memory_mib)
        placement = place(
            kind=plan.kind, vcpus=plan.vcpus, memory_mib=plan.memory_mib, disk_gib=plan.disk_gib
        )
        instance = Instance.objects.create(
            customer=customer,
            kind=plan.kind,
            plan=plan,
            image=image,
            hostname=hostname,
            host=placement.host,
            state=InstanceState.PENDING,
            external_id=external_id,
            mac=_random_mac(),
            uid_slot=placement.uid_slot,
            ssh_keys=ssh_keys,
            root_password_hash=root_password_hash,
        )
        IpAddress.objects.create(
            pool=placement.host.ip_pool, address=placement.address, instance=instance
        )
        operation = Operation.objects.create(
            instance=instance,
            action=Operation.Action.CREATE,
            source=source,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
        )
        audit.record(
            action="instance.order",
            source=source,
            actor=actor,
            target=instance,
            message=f"Ordered {plan.name} with {image.name} as {hostname} on {placement.host.name}.",
            data={"plan": plan.pk, "image": image.pk, "host": placement.host.name, "ip": placement.address},
        )
        publish_instance(instance)
        dispatch_operation(operation)
    return instance
