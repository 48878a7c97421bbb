"""What the customer pages read: filtered instance lists, an instance's operation history as
its owner should see it, and its recent usage as series for the graphs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from panel.instances.models import Instance, InstanceState, Operation
from panel.usage.models import UsageSample
from panel.usage.services import MAX_SAMPLE_GAP

MIB = 1024 * 1024
# Graph windows: how far back, and the bucket the points are averaged into (0: every sample).
USAGE_WINDOWS: dict[str, tuple[timedelta, int]] = {
    "hour": (timedelta(hours=1), 0),
    "day": (timedelta(days=1), 300),
}


def filter_instances(instances: QuerySet, *, q: str = "", state: str = "", kind: str = "") -> QuerySet:
    """``q`` matches a hostname (any part) or an IPv4 address (its start); terminated instances
    only show when asked for by state."""
    if state:
        instances = instances.filter(state=state)
    else:
        instances = instances.exclude(state=InstanceState.TERMINATED)
    if kind:
        instances = instances.filter(kind=kind)
    q = q.strip()
    if q:
        matching = Instance.objects.filter(
            Q(hostname__icontains=q) | Q(ip_addresses__address__startswith=q)
        ).values("pk")
        instances = instances.filter(pk__in=matching)
    return instances


@dataclass(frozen=True)
class HistoryRow:
    operation: Operation
    who: str

    @property
    def duration(self) -> timedelta | None:
        return self.operation.duration


def _who(operation: Operation, viewer) -> str:
    actor = operation.requested_by
    if actor is not None:
        if actor.pk == viewer.pk:
            return "You"
        if actor.is_staff and not viewer.is_staff:
            return "Your provider"
        return actor.get_username()
    return {
        Operation.Source.API: "API",
        Operation.Source.SYSTEM: "Berth (automatic)",
    }.get(operation.source, "Web panel")


def operation_history(instance: Instance, viewer, *, limit: int = 50) -> list[HistoryRow]:
    operations = instance.operations.select_related("requested_by")[:limit]
    return [HistoryRow(operation=op, who=_who(op, viewer)) for op in operations]


def _rates(samples: list[tuple], vcpus: int) -> list[tuple[datetime, float | None, float | None, float | None, float | None]]:
    """(at, cpu %, memory MiB, received B/s, sent B/s) between each pair of samples; None
    points where the instance was not sampled (stopped), so the graph shows a gap."""
    points: list[tuple] = []
    for (t0, cpu0, _mem0, rx0, tx0), (t1, cpu1, mem1, rx1, tx1) in pairwise(samples):
        span = (t1 - t0).total_seconds()
        if span <= 0:
            continue
        if t1 - t0 > MAX_SAMPLE_GAP:
            points.append((t0 + (t1 - t0) / 2, None, None, None, None))
            continue
        if cpu1 < cpu0 or rx1 < rx0 or tx1 < tx0:  # counters restarted with the instance
            continue
        points.append((t1, (cpu1 - cpu0) / span / max(vcpus, 1) * 100, mem1 / MIB,
                       (rx1 - rx0) / span, (tx1 - tx0) / span))
    return points


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _buckets(points: list[tuple], seconds: int) -> list[tuple]:
    grouped: dict[int, list[tuple]] = {}
    for point in points:
        grouped.setdefault(int(point[0].timestamp()) // seconds, []).append(point)
    return [
        (datetime.fromtimestamp((key + 1) * seconds, tz=UTC),
         *(_mean([p[i] for p in group]) for i in range(1, 5)))
        for key, group in sorted(grouped.items())
    ]


def usage_series(instance: Instance, *, window: str, now: datetime | None = None) -> dict[str, Any]:
    """The instance's CPU, memory and network over ``window`` ("hour" or "day"), as columns
    ready for a chart: times in Unix seconds, CPU in percent of the plan's vCPUs, memory in
    MiB, network in bytes per second."""
    span, bucket = USAGE_WINDOWS[window]
    now = now or timezone.now()
    start = now - span
    samples = list(
        UsageSample.objects.filter(instance=instance, at__gt=start - MAX_SAMPLE_GAP, at__lte=now)
        .order_by("at")
        .values_list("at", "cpu_seconds", "memory_bytes", "net_rx_bytes", "net_tx_bytes")
    )
    points = [p for p in _rates(samples, instance.plan.vcpus) if p[0] >= start]
    if bucket:
        points = _buckets(points, bucket)
    latest = next((p for p in reversed(points) if p[1] is not None), None)

    def column(i: int, digits: int) -> list[float | None]:
        return [None if p[i] is None else round(p[i], digits) for p in points]

    return {
        "window": window,
        "from": int(start.timestamp()),
        "to": int(now.timestamp()),
        "vcpus": instance.plan.vcpus,
        "memory_limit_mib": instance.plan.memory_mib,
        "t": [int(p[0].timestamp()) for p in points],
        "cpu_percent": column(1, 2),
        "memory_mib": column(2, 1),
        "net_rx_bps": column(3, 0),
        "net_tx_bps": column(4, 0),
        "latest": None if latest is None else {
            "at": int(latest[0].timestamp()), "cpu_percent": round(latest[1], 1),
            "memory_mib": round(latest[2], 1), "net_rx_bps": round(latest[3]),
            "net_tx_bps": round(latest[4]),
        },
    }
