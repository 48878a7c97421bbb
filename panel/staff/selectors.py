"""Reading what the admin pages show: the dashboard, filtered instance lists, the audit and
operations logs (searchable, failures first), refused placements."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from panel.audit.models import AuditEntry
from panel.hosts.models import Host
from panel.hosts.selectors import UNKNOWN, fleet_capacity, fleet_totals
from panel.instances.models import Instance, InstanceState, Operation

DAY = timedelta(days=1)


def failed_operations(since=None) -> QuerySet[Operation]:
    since = since or timezone.now() - DAY
    return (
        Operation.objects.filter(state=Operation.State.FAILED, created_at__gte=since)
        .select_related("instance__host", "instance__customer")
        .order_by("-created_at")
    )


def placement_failures(*, host: Host | None = None, since=None) -> QuerySet[AuditEntry]:
    qs = AuditEntry.objects.filter(action="placement.failed")
    if since is not None:
        qs = qs.filter(at__gte=since)
    if host is not None:
        qs = qs.filter(data__reasons__has_key=host.name)
    return qs.order_by("-at")


def instances_by_state() -> dict[str, int]:
    counts = dict(
        Instance.objects.live().values("state").annotate(n=Count("id")).values_list("state", "n")
    )
    counts[UNKNOWN] = unreachable_instances().count()
    return counts


def unreachable_instances() -> QuerySet[Instance]:
    return Instance.objects.live().exclude(state=InstanceState.PENDING).exclude(host__status=Host.Status.ONLINE).filter(host__isnull=False)


def dashboard() -> dict:
    capacities = fleet_capacity()
    since = timezone.now() - DAY
    return {
        "capacities": capacities,
        "totals": fleet_totals(capacities),
        "by_state": instances_by_state(),
        "failed_operations": failed_operations(since)[:10],
        "failed_count": failed_operations(since).count(),
        "hosts_offline": [c.host for c in capacities if not c.host.is_online],
        "placement_failures": placement_failures(since=since)[:10],
        "placement_failure_count": placement_failures(since=since).count(),
    }


def filter_instances(*, host=None, customer=None, state: str = "", kind: str = "", q: str = "") -> QuerySet[Instance]:
    qs = Instance.objects.select_related("host", "customer__user", "plan", "image").prefetch_related("ip_addresses")
    if host is not None:
        qs = qs.filter(host=host)
    if customer is not None:
        qs = qs.filter(customer=customer)
    if state == UNKNOWN:
        qs = qs.filter(pk__in=unreachable_instances().values("pk"))
    elif state:
        qs = qs.filter(state=state)
    else:
        qs = qs.live()
    if kind:
        qs = qs.filter(kind=kind)
    if q:
        term = q.strip()
        match = Q(hostname__icontains=term) | Q(ip_addresses__address=term) | Q(external_id=term)
        if len(term) >= 6 and all(c in "0123456789abcdef-" for c in term.lower()):
            match |= Q(uuid__icontains=term.replace("-", ""))
        qs = qs.filter(match).distinct()
    return qs.order_by("-created_at", "-id")


def search_audit(*, q: str = "", source: str = "", action: str = "") -> QuerySet[AuditEntry]:
    qs = AuditEntry.objects.select_related("actor")
    if source:
        qs = qs.filter(source=source)
    if action:
        qs = qs.filter(action__startswith=action)
    if q:
        term = q.strip()
        qs = qs.filter(
            Q(message__icontains=term) | Q(action__icontains=term) | Q(actor__username__icontains=term)
            | Q(target_id=term)
        )
    return qs.order_by("-at", "-id")


def search_operations(*, q: str = "", state: str = "", host: Host | None = None) -> QuerySet[Operation]:
    """Operations with failures first, then the newest."""
    qs = Operation.objects.select_related("instance__host", "instance__customer__user", "requested_by")
    if state:
        qs = qs.filter(state=state)
    if host is not None:
        qs = qs.filter(instance__host=host)
    if q:
        term = q.strip()
        qs = qs.filter(
            Q(error__icontains=term) | Q(instance__hostname__icontains=term) | Q(action__icontains=term)
            | Q(instance__host__name=term)
        )
    failed_first = Case(When(state=Operation.State.FAILED, then=Value(0)), default=Value(1), output_field=IntegerField())
    return qs.order_by(failed_first, "-created_at", "-id")
