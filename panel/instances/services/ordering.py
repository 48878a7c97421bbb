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
from panel.catalog.oci import app_option_errors
from panel.hosts.models import IpAddress
from panel.hosts.placement import place
from panel.hosts.services import record_placement_failure
from panel.instances.dispatch import dispatch_operation
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.errors import CapacityError, InvalidOrder, QuotaExceeded
from panel.instances.validators import validate_hostname
from panel.realtime.publish import publish_instance


def _random_mac() -> str:
    # 52:54:00 is QEMU/KVM's prefix; the locally administered range keeps clear of real NICs.
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _check_order(*, plan: Plan, image: Image, hostname: str, command: list[str] | None = None,
                 env: dict[str, str] | None = None, customer: Customer | None = None) -> str:
    errors: dict[str, str] = app_option_errors(image, command=command, env=env)
    try:
        hostname = validate_hostname(hostname)
    except ValidationError as exc:
        errors["hostname"] = exc.messages[0]
    if not plan.is_active:
        errors["plan"] = "This plan can no longer be ordered."
    if not image.orderable_by(customer):  # another customer's own ISO: as if it did not exist
        errors["image"] = "Choose an image that exists and can be ordered."
    elif not image.is_active:
        errors["image"] = "This image can no longer be ordered."
    elif image.kind != plan.kind:
        errors["image"] = f"The image {image.name} is for {image.get_kind_display().lower()}s, but the plan is for {plan.get_kind_display().lower()}s."
    if errors:
        raise InvalidOrder(errors)
    return hostname


def _ordered_with(customer: Customer, idempotency_key: str) -> Instance | None:
    operation = (
        Operation.objects.select_related("instance")
        .filter(instance__customer=customer, action=Operation.Action.CREATE,
                params__order_token=idempotency_key)
        .first()
    )
    return operation.instance if operation else None


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
    idempotency_key: str = "",
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Instance:
    """Place and reserve a new instance, and queue its creation on the chosen host.

    ``idempotency_key`` (the order form's one-time token): the same key again returns the
    instance it already ordered instead of a second one. ``command`` and ``env``: for an
    application image, replace its Cmd and add to its Env.

    Raises InvalidOrder, QuotaExceeded or CapacityError; nothing is written when it does.
    """
    hostname = _check_order(plan=plan, image=image, hostname=hostname, command=command, env=env,
                            customer=customer)
    try:
        return _place_and_reserve(
            customer=customer, plan=plan, image=image, hostname=hostname, actor=actor,
            source=source, external_id=external_id, ssh_keys=ssh_keys,
            root_password_hash=root_password_hash, idempotency_key=idempotency_key,
            command=command, env=env or {},
        )
    except CapacityError as exc:
        # Outside the rolled-back transaction, so the admin can see why the order was refused.
        record_placement_failure(
            plan=plan, customer=customer, hostname=hostname, reasons=exc.reasons,
            actor=actor, source=source,
        )
        raise


def _place_and_reserve(
    *, customer: Customer, plan: Plan, image: Image, hostname: str, actor, source: str,
    external_id: str | None, ssh_keys: str, root_password_hash: str, idempotency_key: str,
    command: list[str] | None, env: dict[str, str],
) -> Instance:
    with transaction.atomic():
        # Locking the customer row serialises one customer's orders, so two cannot both pass
        # the quota check; placement then locks the host rows for the same reason.
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        if idempotency_key:
            # After the lock: a second post of the same form waits for the first to commit.
            earlier = _ordered_with(customer, idempotency_key)
            if earlier is not None:
                if (earlier.plan_id, earlier.image_id, earlier.hostname) != (plan.pk, image.pk, hostname):
                    raise InvalidOrder({"order": f"This order form was already used to order "
                                                 f"{earlier.hostname}. Reload the page to order another instance."})
                return earlier
        check_quota(customer, vcpus=plan.vcpus, memory_mib=plan.memory_mib)
        placement = place(
            kind=plan.kind, vcpus=plan.vcpus, memory_mib=plan.memory_mib, disk_gib=plan.disk_gib,
            allowed_hosts=list(plan.hosts.values_list("pk", flat=True)), plan_name=plan.name,
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
            app_command=command or None,
            app_env=env,
        )
        IpAddress.objects.create(
            pool=placement.host.ip_pool, address=placement.address, instance=instance
        )
        operation = Operation.objects.create(
            instance=instance,
            action=Operation.Action.CREATE,
            source=source,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
            params={"order_token": idempotency_key} if idempotency_key else {},
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
