"""Comparing what a host really runs with what the panel believes, after every reconcile.

Differences move the instance's state (with an audit entry saying why). A VM whose vCPUs or
memory were edited on the host (virsh) gets an audit entry saying what differs from its plan,
and so does a container whose host-side pieces were removed (a deleted network link).
Instances on the host that the panel does not know are listed for the admin on the host's
facts, never deleted.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from panel.audit import services as audit
from panel.audit.models import AuditEntry
from panel.hosts.models import Host
from panel.instances.models import InstanceState
from panel.instances.services.results import record_power_state

SETTLED = (InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.REBOOTING, InstanceState.ERROR)


def reconcile_host(*, host_name: str, instances: list[dict],
                   listed_after: datetime | None = None) -> list[str]:
    """Apply one host's report; returns the uuids of orphans (on the host, unknown here).

    ``listed_after``: the host listed its instances after this moment (the panel's clock, when
    it asked). An instance that changed since then is left to the next report: the listing may
    predate it (a container created while the host listed would otherwise be "absent")."""
    host = Host.objects.filter(name=host_name).first()
    if host is None:
        return []
    observed = {item["uuid"]: item["state"] for item in instances}
    known = {}
    for instance in host.instances.live().only("uuid", "state"):
        known[instance.uuid.hex] = instance.state
    for uuid, state in known.items():
        if state not in SETTLED:
            continue
        power = observed.get(uuid, "absent")
        record_power_state(
            host_name=host_name,
            uuid=uuid,
            power_state=power,
            reason="Reconcile: the instance is no longer on its host." if power == "absent"
            else f"Reconcile: the host reports it {power}.",
            unchanged_since=listed_after,
        )
    _record_config_drift(host, {item["uuid"]: item for item in instances if "vcpus" in item})
    _record_missing_pieces(host, {item["uuid"]: item["problems"] for item in instances
                                  if item.get("problems")})
    orphans = sorted(set(observed) - set(known))
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if host.facts.get("orphans") != orphans:
            host.facts = {**host.facts, "orphans": orphans}
            host.save(update_fields=["facts"])
    return orphans


def _record_config_drift(host: Host, configured: dict[str, dict]) -> None:
    """Audit each VM defined on the host with other vCPUs or memory than its plan, once per
    difference (a later reconcile that finds the same one stays quiet). An instance with an
    operation under way (a plan change not applied yet) is left for the next reconcile."""
    from panel.instances.services.actions import active_operation  # noqa: PLC0415 (cycle)

    for instance in host.instances.live().filter(uuid__in=list(configured)).select_related("plan"):
        if active_operation(instance) is not None:
            continue
        seen, plan = configured[instance.uuid.hex], instance.plan
        diffs = [f"{seen[key]} {unit} on the host, {want} in plan {plan.name}"
                 for key, unit, want in (("vcpus", "vCPU", plan.vcpus),
                                         ("memory_mib", "MiB", plan.memory_mib))
                 if seen[key] != want]
        if not diffs:
            continue
        message = ("Changed on the host behind Berth's back: " + "; ".join(diffs)
                   + ". A plan change or a rebuild puts the plan's values back.")
        last = (AuditEntry.objects.filter(action="instance.config_drift", target_type="instance",
                                          target_id=str(instance.pk))
                .order_by("-at", "-id").values_list("message", flat=True).first())
        if last != message:
            audit.record(action="instance.config_drift", source=AuditEntry.Source.SYSTEM,
                         target=instance, message=message, data={"host": seen})


def _record_missing_pieces(host: Host, problems: dict[str, list[str]]) -> None:
    """Audit each instance whose host-side pieces were removed behind Berth's back (a deleted
    network link), once per finding. Nothing is repaired or deleted: the admin and the
    customer decide (a stop and start makes the pieces again)."""
    for instance in host.instances.live().filter(uuid__in=list(problems)):
        message = "Changed on the host behind Berth's back: " + "; ".join(problems[instance.uuid.hex]) + "."
        last = (AuditEntry.objects.filter(action="instance.drift", target_type="instance",
                                          target_id=str(instance.pk))
                .order_by("-at", "-id").values_list("message", flat=True).first())
        if last != message:
            audit.record(action="instance.drift", source=AuditEntry.Source.SYSTEM,
                         target=instance, message=message, data={"problems": problems[instance.uuid.hex]})
