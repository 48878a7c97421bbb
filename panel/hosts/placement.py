"""Placement: which host gets a new instance, and the address and uid range it receives.

Filters (enabled and not draining, online, supports the kind, allowed for the plan, room after
overcommit, a free IP, a free uid range) then a weigher (the admin's placement policy: spread by
default, or pack). Must run inside the ordering transaction: the candidate host rows are locked,
so two parallel orders can never both take the last slot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Sum

from panel.hosts.models import Host, IpAddress, PlacementPolicy
from panel.instances.services.errors import CapacityError


@dataclass(frozen=True)
class HostUsage:
    vcpus: int
    memory_mib: int
    disk_gib: int
    instances: int


@dataclass(frozen=True)
class Placement:
    host: Host
    address: str
    uid_slot: int | None


def fleet_usage(host_ids: list[int]) -> dict[int, HostUsage]:
    """Usage of many hosts in one query (placement reads every candidate's)."""
    from panel.instances.models import Instance  # noqa: PLC0415 (instances imports hosts)

    rows = Instance.objects.live().filter(host__in=host_ids).values("host").annotate(
        vcpus=Sum("plan__vcpus"), memory=Sum("plan__memory_mib"), disk=Sum("plan__disk_gib"), n=Count("id"),
    )
    usage = {row["host"]: HostUsage(row["vcpus"] or 0, row["memory"] or 0, row["disk"] or 0, row["n"]) for row in rows}
    moving = moving_in(host_ids)
    return {pk: _plus(usage.get(pk, HostUsage(0, 0, 0, 0)), moving.get(pk)) for pk in host_ids}


def _plus(usage: HostUsage, more: HostUsage | None) -> HostUsage:
    if more is None:
        return usage
    return HostUsage(usage.vcpus + more.vcpus, usage.memory_mib + more.memory_mib,
                     usage.disk_gib + more.disk_gib, usage.instances + more.instances)


def moving_in(host_ids: Collection[int]) -> dict[int, HostUsage]:
    """What moves under way hold on their target hosts (``panel/instances/services/moves.py``):
    reserved when the move is accepted, like an order, until the instance is switched over or
    the move ends; counted by every placement, so a target is never oversubscribed."""
    from panel.instances.services.moves import reservations  # noqa: PLC0415 (cycle)

    totals: dict[int, HostUsage] = {}
    for host_id, plan, _slot in reservations(host_ids):
        totals[host_id] = _plus(totals.get(host_id, HostUsage(0, 0, 0, 0)),
                                HostUsage(plan.vcpus, plan.memory_mib, plan.disk_gib, 1))
    return totals


def host_usage(host: Host, *, exclude_instance_id: int | None = None) -> HostUsage:
    from panel.instances.models import Instance  # noqa: PLC0415 (instances imports hosts)

    qs = Instance.objects.live().filter(host=host)
    if exclude_instance_id is not None:
        qs = qs.exclude(pk=exclude_instance_id)
    agg = qs.aggregate(
        vcpus=Sum("plan__vcpus"),
        memory=Sum("plan__memory_mib"),
        disk=Sum("plan__disk_gib"),
        n=Count("id"),
    )
    return _plus(HostUsage(agg["vcpus"] or 0, agg["memory"] or 0, agg["disk"] or 0, agg["n"]),
                 moving_in([host.pk]).get(host.pk))


def capacity_problem(host: Host, usage: HostUsage, *, vcpus: int, memory_mib: int, disk_gib: int) -> str:
    """Why ``host`` cannot take this much more, or '' when it can."""
    cpu_limit = Decimal(host.cpus) * host.cpu_overcommit
    mem_limit = Decimal(host.memory_mib) * host.memory_overcommit
    if usage.vcpus + vcpus > cpu_limit:
        return f"not enough vCPUs ({usage.vcpus} of {float(cpu_limit):g} in use)"
    if usage.memory_mib + memory_mib > mem_limit:
        return f"not enough memory ({usage.memory_mib} of {float(mem_limit):g} MiB in use)"
    if host.disk_gib and usage.disk_gib + disk_gib > host.disk_gib:
        return f"not enough disk ({usage.disk_gib} of {host.disk_gib} GiB in use)"
    return ""


def free_address(host: Host) -> str | None:
    pool = getattr(host, "ip_pool", None)
    if pool is None:
        return None
    taken = {ipaddress.IPv4Address(a) for a in IpAddress.objects.filter(pool=pool).values_list("address", flat=True)}
    for address in pool.usable_addresses():
        if address not in taken:
            return str(address)
    return None


def free_uid_slot(host: Host) -> int | None:
    from panel.instances.models import Instance  # noqa: PLC0415

    taken = set(
        Instance.objects.live().filter(host=host, uid_slot__isnull=False).values_list("uid_slot", flat=True)
    )
    taken |= taken_by_moves(host)
    for slot in range(host.uid_slots):
        if slot not in taken:
            return slot
    return None


def taken_by_moves(host: Host) -> set[int]:
    """uid ranges reserved on ``host`` by moves under way (see ``moving_in``)."""
    from panel.instances.services.moves import reservations  # noqa: PLC0415

    return {slot for _host, _plan, slot in reservations([host.pk]) if slot is not None}


def _weight(host: Host, usage: HostUsage, weigher: str) -> tuple:
    mem_limit = float(Decimal(host.memory_mib) * host.memory_overcommit) or 1.0
    free_ratio = 1.0 - usage.memory_mib / mem_limit
    # spread: the emptiest host first; pack: the fullest host that still fits first.
    return (-free_ratio if weigher == Host.Weigher.SPREAD else free_ratio, usage.instances, host.pk)


def place(
    *,
    kind: str,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    allowed_hosts: Collection[int] | None = None,
    plan_name: str = "",
    weigher: str | None = None,
) -> Placement:
    """Choose a host and reserve nothing yet: the caller writes the rows in this transaction.

    ``allowed_hosts`` (host ids) narrows the fleet to the hosts a plan may run on; None or
    empty means every host. ``weigher`` defaults to the admin's placement policy.
    """
    if weigher is None:
        weigher = PlacementPolicy.current().weigher
    # Every host row is locked, in one order (pk), by every order: parallel orders queue here
    # instead of both taking the last room, and cannot deadlock on each other.
    candidates = list(
        Host.objects.select_for_update(of=("self",)).select_related("ip_pool").order_by("pk")
    )
    allowed = set(allowed_hosts or ())
    usages = fleet_usage([h.pk for h in candidates])
    reasons: dict[str, str] = {}
    fitting: list[tuple[tuple, Host]] = []
    for host in candidates:
        if not host.is_enabled:
            reasons[host.name] = "disabled"
            continue
        if host.is_draining:
            reasons[host.name] = "draining"
            continue
        if host.status != Host.Status.ONLINE:
            reasons[host.name] = "offline"
            continue
        if not host.supports(kind):
            reasons[host.name] = f"does not run {kind}s"
            continue
        if allowed and host.pk not in allowed:
            reasons[host.name] = f"plan {plan_name} is not allowed on this host" if plan_name else "the plan is not allowed on this host"
            continue
        usage = usages[host.pk]
        problem = capacity_problem(host, usage, vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib)
        if problem:
            reasons[host.name] = problem
            continue
        fitting.append((_weight(host, usage, weigher), host))
    for _, host in sorted(fitting, key=lambda pair: pair[0]):
        address = free_address(host)
        if address is None:
            reasons[host.name] = "no free IPv4 address in its pool"
            continue
        uid_slot = None
        if kind == "container":
            uid_slot = free_uid_slot(host)
            if uid_slot is None:
                reasons[host.name] = "no free uid range"
                continue
        return Placement(host=host, address=address, uid_slot=uid_slot)
    if not candidates:
        reasons["-"] = "no hosts are registered"
    raise CapacityError("No host has room for this instance right now.", reasons)

