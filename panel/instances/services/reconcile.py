"""Comparing what a host really runs with what the panel believes, after every reconcile.

Differences move the instance's state (with an audit entry saying why). Instances on the host
that the panel does not know are listed for the admin on the host's facts, never deleted.
"""

from __future__ import annotations

from django.db import transaction

from panel.hosts.models import Host
from panel.instances.models import InstanceState
from panel.instances.services.results import record_power_state

SETTLED = (InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.REBOOTING, InstanceState.ERROR)


def reconcile_host(*, host_name: str, instances: list[dict[str, str]]) -> list[str]:
    """Apply one host's report; returns the uuids of orphans (on the host, unknown here)."""
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
        )
    orphans = sorted(set(observed) - set(known))
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host.pk)
        if host.facts.get("orphans") != orphans:
            host.facts = {**host.facts, "orphans": orphans}
            host.save(update_fields=["facts"])
    return orphans
