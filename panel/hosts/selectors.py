"""Reading hosts for the admin: capacity after overcommit, what is allocated, what is free,
and how an instance shows while its host is unreachable."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Q, Sum

from panel.hosts.models import Host, IpAddress

UNKNOWN = "unknown"
# States that say nothing about the host (no instance there yet, or none any more).
HOST_INDEPENDENT_STATES = ("pending", "terminated")


def instance_display_state(instance) -> str:
    """The state to show: ``unknown`` while the instance's host is not reporting.

    Derived for display only; the instance's real state (and the API's state list) stay as
    they are, and the host's next heartbeat shows the real state again.
    """
    host = instance.host
    if host is not None and host.status != Host.Status.ONLINE and instance.state not in HOST_INDEPENDENT_STATES:
        return UNKNOWN
    return instance.state


@dataclass(frozen=True)
class Gauge:
    """One capacity bar: ``used`` of ``limit`` (0 when the host has not reported it)."""

    used: float
    limit: float

    @property
    def free(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.limit)) if self.limit else 0


@dataclass(frozen=True)
class HostCapacity:
    host: Host
    instances: int
    vcpus: Gauge        # allocated vCPUs of cpus × cpu overcommit
    memory: Gauge       # allocated MiB of memory × memory overcommit
    disk: Gauge         # allocated GiB of the host's disk
    ips: Gauge          # addresses handed out of the pool
    real_memory: Gauge  # what the host itself reports in use
    load1: float

    def as_dict(self) -> dict:
        gauges = {name: getattr(self, name) for name in ("vcpus", "memory", "disk", "ips", "real_memory")}
        return {
            "id": self.host.pk,
            "name": self.host.name,
            "status": self.host.status,
            "enabled": self.host.is_enabled,
            "draining": self.host.is_draining,
            "instances": self.instances,
            "load1": self.load1,
            **{name: {"used": g.used, "limit": g.limit, "percent": g.percent} for name, g in gauges.items()},
        }


def _pool_size(host: Host) -> int:
    pool = getattr(host, "ip_pool", None)
    if pool is None:
        return 0
    return max(0, pool.ip_network.num_addresses - 3)  # network, broadcast, gateway


def fleet_capacity(hosts=None) -> list[HostCapacity]:
    """Capacity of ``hosts`` (all by default) in three queries, whatever their number."""
    from panel.instances.models import Instance  # noqa: PLC0415 (instances imports hosts)

    hosts = list((hosts if hosts is not None else Host.objects.all()).select_related("ip_pool"))
    ids = [h.pk for h in hosts]
    allocated = {
        row["host"]: row
        for row in Instance.objects.live().filter(host__in=ids).values("host").annotate(
            vcpus=Sum("plan__vcpus"), memory=Sum("plan__memory_mib"), disk=Sum("plan__disk_gib"),
            n=Count("id"),
        )
    }
    ips = dict(
        IpAddress.objects.filter(pool__host__in=ids).values("pool__host").annotate(n=Count("id"))
        .values_list("pool__host", "n")
    )
    result = []
    for host in hosts:
        row = allocated.get(host.pk, {})
        facts = host.facts or {}
        load = facts.get("load") or [0]
        available = facts.get("memory_available_mib")
        result.append(HostCapacity(
            host=host,
            instances=row.get("n", 0),
            vcpus=Gauge(row.get("vcpus") or 0, float(Decimal(host.cpus) * host.cpu_overcommit)),
            memory=Gauge(row.get("memory") or 0, float(Decimal(host.memory_mib) * host.memory_overcommit)),
            disk=Gauge(row.get("disk") or 0, host.disk_gib),
            ips=Gauge(ips.get(host.pk, 0), _pool_size(host)),
            real_memory=Gauge(host.memory_mib - available if isinstance(available, int) else 0, host.memory_mib),
            load1=float(load[0]) if isinstance(load, list) and load else 0.0,
        ))
    return result


def fleet_totals(capacities: list[HostCapacity]) -> dict[str, Gauge]:
    """Used and free across the hosts that take new instances (enabled, online, not draining)."""
    usable = [c for c in capacities if c.host.accepts_instances and c.host.is_online]
    return {
        name: Gauge(sum(getattr(c, name).used for c in usable), sum(getattr(c, name).limit for c in usable))
        for name in ("vcpus", "memory", "disk", "ips")
    }


def hosts_offline():
    return Host.objects.filter(~Q(status=Host.Status.ONLINE))
