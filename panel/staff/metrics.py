"""The panel's and the hosts' figures in Prometheus's text format (exposition format 0.0.4)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from panel.accounts.models import Customer
from panel.hosts.models import Host
from panel.hosts.selectors import fleet_capacity
from panel.instances.models import Instance, Operation
from panel.staff.selectors import placement_failures, unreachable_instances

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            number = str(int(value)) if float(value).is_integer() else repr(float(value))
            self.lines.append(f"{name}{{{label_text}}} {number}" if label_text else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def host_metrics(out: Exposition, hosts) -> None:
    capacities = fleet_capacity(hosts)
    now = timezone.now()

    def per_host(value) -> list[tuple[dict[str, str], float]]:
        return [({"host": c.host.name}, float(value(c))) for c in capacities]

    out.metric("berth_host_up", "gauge", "1 while the host sends heartbeats.", per_host(lambda c: c.host.is_online))
    out.metric("berth_host_enabled", "gauge", "1 when the host takes new instances (enabled).", per_host(lambda c: c.host.is_enabled))
    out.metric("berth_host_draining", "gauge", "1 while the host is drained.", per_host(lambda c: c.host.is_draining))
    out.metric("berth_host_heartbeat_age_seconds", "gauge", "Seconds since the host's last heartbeat.",
               [({"host": c.host.name}, (now - c.host.last_heartbeat).total_seconds())
                for c in capacities if c.host.last_heartbeat])
    out.metric("berth_host_cpus", "gauge", "CPUs the host reports.", per_host(lambda c: c.host.cpus))
    out.metric("berth_host_vcpus_allocated", "gauge", "vCPUs of the host's live instances.", per_host(lambda c: c.vcpus.used))
    out.metric("berth_host_vcpus_limit", "gauge", "CPUs times the CPU overcommit ratio.", per_host(lambda c: c.vcpus.limit))
    out.metric("berth_host_memory_bytes", "gauge", "Memory the host reports.", per_host(lambda c: c.host.memory_mib * 2**20))
    out.metric("berth_host_memory_allocated_bytes", "gauge", "Memory of the host's live instances.", per_host(lambda c: c.memory.used * 2**20))
    out.metric("berth_host_memory_limit_bytes", "gauge", "Memory times the memory overcommit ratio.", per_host(lambda c: c.memory.limit * 2**20))
    out.metric("berth_host_memory_used_bytes", "gauge", "Memory in use on the host, as it reports.", per_host(lambda c: c.real_memory.used * 2**20))
    out.metric("berth_host_disk_bytes", "gauge", "Disk of the host's state directory.", per_host(lambda c: c.host.disk_gib * 2**30))
    out.metric("berth_host_disk_allocated_bytes", "gauge", "Disk of the host's live instances.", per_host(lambda c: c.disk.used * 2**30))
    out.metric("berth_host_load1", "gauge", "The host's one-minute load average.", per_host(lambda c: c.load1))
    out.metric("berth_host_instances", "gauge", "Live instances placed on the host.", per_host(lambda c: c.instances))
    out.metric("berth_host_ipv4_used", "gauge", "Addresses handed out of the host's pool.", per_host(lambda c: c.ips.used))
    out.metric("berth_host_ipv4_size", "gauge", "Addresses the host's pool can hand out.", per_host(lambda c: c.ips.limit))
    out.metric("berth_host_orphans", "gauge", "Instances on the host the panel does not know (last reconcile).",
               per_host(lambda c: len((c.host.facts or {}).get("orphans", []))))


def panel_metrics() -> str:
    out = Exposition()
    day_ago = timezone.now() - timedelta(days=1)
    by_state = Instance.objects.values("state", "kind").annotate(n=Count("id"))
    out.metric("berth_instances", "gauge", "Instances by state and kind.",
               [({"state": r["state"], "kind": r["kind"]}, r["n"]) for r in by_state])
    out.metric("berth_instances_unknown", "gauge", "Live instances whose host is not reporting.",
               [({}, unreachable_instances().count())])
    ops = Operation.objects.filter(created_at__gte=day_ago).values("state", "action").annotate(n=Count("id"))
    out.metric("berth_operations_last_day", "gauge", "Operations created in the last 24 hours.",
               [({"state": r["state"], "action": r["action"]}, r["n"]) for r in ops])
    out.metric("berth_placement_failures_last_day", "gauge", "Orders refused for lack of a host, last 24 hours.",
               [({}, placement_failures(since=day_ago).count())])
    hosts = Host.objects.values("status").annotate(n=Count("id"))
    out.metric("berth_hosts", "gauge", "Hosts by status.", [({"status": r["status"]}, r["n"]) for r in hosts])
    out.metric("berth_customers", "gauge", "Customers, by whether they are suspended.",
               [({"suspended": str(s).lower()}, Customer.objects.filter(is_suspended=s).count()) for s in (False, True)])
    host_metrics(out, Host.objects.all())
    return out.text()


def single_host_metrics(host: Host) -> str:
    out = Exposition()
    host_metrics(out, Host.objects.filter(pk=host.pk))
    return out.text()
