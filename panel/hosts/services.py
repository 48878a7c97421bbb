"""Hosts: enrolling them, the admin's switches (enable, disable, drain, overcommit, notes),
heartbeats in and silence detected, and refused placements recorded for the admin."""

from __future__ import annotations

import ipaddress
import re
import shlex
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from panel.audit import services as audit
from panel.hosts.models import Host, HostSample, IpPool
from panel.realtime.publish import publish_host

SYSTEM = "system"
HOST_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
# At most one graph point per host per interval, and a day of them.
SAMPLE_INTERVAL = timedelta(seconds=15)
SAMPLE_KEEP = timedelta(hours=24)
PLACEMENT_FAILED_TASK = "berth.panel.placement_failed"


class HostError(Exception):
    """An admin's request about a host cannot be done; ``field`` names the input at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def register_host(
    *,
    name: str,
    network: str,
    bridge: str = "berth0",
    state_dir: str | None = None,
    uid_base: int = 1_000_000,
    uid_slots: int = 1024,
) -> Host:
    """Create (or return the existing) host with its IP pool. The gateway is the first address."""
    net = ipaddress.IPv4Network(network, strict=True)
    gateway = str(next(net.hosts()))
    with transaction.atomic():
        host, _ = Host.objects.get_or_create(
            name=name,
            defaults={
                "bridge": bridge,
                "state_dir": state_dir or str(settings.BERTH_HOSTS_DIR / name),
                "uid_base": uid_base,
                "uid_slots": uid_slots,
            },
        )
        IpPool.objects.get_or_create(host=host, defaults={"network": str(net), "gateway": gateway})
    return host


def check_new_host(*, name: str, network: str, bridge: str) -> None:
    """Refuse a host that would clash with one already enrolled (HostError names the field)."""
    if not HOST_NAME_RE.match(name):
        raise HostError(
            "Use 1-40 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
            "name",
        )
    if Host.objects.filter(name=name).exists():
        raise HostError(f"A host named {name} is already enrolled.", "name")
    try:
        net = ipaddress.IPv4Network(network, strict=True)
    except ValueError as exc:
        raise HostError(f"Not a network in CIDR form: {exc}.", "network") from None
    if net.num_addresses < 4:
        raise HostError("The pool needs at least a /30: a gateway and one address.", "network")
    for pool in IpPool.objects.select_related("host"):
        if pool.ip_network.overlaps(net):
            raise HostError(f"{net} overlaps host {pool.host.name}'s pool {pool.network}.", "network")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
        raise HostError("A bridge name has 1-15 letters, digits, '.', '_' or '-'.", "bridge")


def suggest_uid_base() -> int:
    """A uid range after every enrolled host's: hosts that share a machine must not share uids
    (hosts on separate machines may, so this is only the default)."""
    ends = [h.uid_base + h.uid_slots * 65536 for h in Host.objects.only("uid_base", "uid_slots")]
    return max([1_000_000, *ends])


def enrol_host(
    *,
    name: str,
    network: str,
    bridge: str = "berth0",
    state_dir: str | None = None,
    uid_base: int = 1_000_000,
    actor=None,
    source: str = "ui",
) -> tuple[Host, str]:
    """Enrol a new host and issue its credential; returns (host, secret). The secret is shown
    to the admin once and stored only as a hash."""
    from panel.hosts.credentials import issue_credential  # noqa: PLC0415 (credentials imports this)

    check_new_host(name=name, network=network, bridge=bridge)
    with transaction.atomic():
        host = register_host(
            name=name, network=network, bridge=bridge, state_dir=state_dir, uid_base=uid_base
        )
        audit.record(
            action="host.enrol", source=source, actor=actor, target=host,
            message=f"Enrolled host {name} with pool {network} on bridge {bridge}.",
            data={"network": network, "bridge": bridge, "uid_base": uid_base},
        )
        secret = issue_credential(host, actor=actor, source=source)
    return host, secret


def host_environment(host: Host, *, secret: str | None = None) -> dict[str, str]:
    """What a host's worker and agent need to know, as environment variables.

    With ``secret`` the Redis URL carries the host's own credential; without it (the panel
    never keeps a secret) it shows where the credential goes.
    """
    from panel.hosts.credentials import host_redis_url  # noqa: PLC0415

    pool = host.ip_pool
    return {
        "BERTH_HOST_NAME": host.name,
        "BERTH_REDIS_URL": host_redis_url(host, secret) if host.credential_hash else settings.REDIS_URL,
        "BERTH_STATE_DIR": host.state_dir,
        "BERTH_IMAGE_DIR": str(settings.BERTH_IMAGE_DIR),
        "BERTH_BRIDGE": host.bridge,
        "BERTH_GATEWAY": pool.gateway,
        "BERTH_PREFIXLEN": str(pool.prefixlen),
        "BERTH_UID_BASE": str(host.uid_base),
        "BERTH_UID_SLOTS": str(host.uid_slots),
    }


def host_commands(host: Host, *, secret: str | None = None) -> list[str]:
    """The exact commands to run, as root from a Berth checkout, on the host's machine."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host_environment(host, secret=secret).items())
    return [
        f"env {env} .venv/bin/celery -A workers.hostworker worker -Q {host.queue} "
        f"-n {host.queue}@%h --without-gossip --without-mingle --without-heartbeat",
        f"env {env} .venv/bin/python -m workers.agent",
    ]


# --- the admin's switches ------------------------------------------------------------------

def _change_host(host_id: int, *, actor, source: str, action: str, message: str, **changes) -> Host:
    with transaction.atomic():
        host = Host.objects.select_for_update().get(pk=host_id)
        for field, value in changes.items():
            setattr(host, field, value)
        host.save(update_fields=list(changes))
        audit.record(action=action, source=source, actor=actor, target=host, message=message,
                     data={k: str(v) for k, v in changes.items()})
        publish_host(host)
    return host


def set_enabled(host: Host, *, enabled: bool, actor=None, source: str = "ui") -> Host:
    verb = "Enabled" if enabled else "Disabled"
    return _change_host(
        host.pk, actor=actor, source=source, action=f"host.{verb.lower()}",
        message=f"{verb} host {host.name}" + ("." if enabled else ": no new instances go to it."),
        is_enabled=enabled,
    )


def set_draining(host: Host, *, draining: bool, actor=None, source: str = "ui") -> Host:
    if draining:
        left = host.instances.live().count()
        message = f"Draining host {host.name}: no new instances; {left} still on it."
    else:
        message = f"Host {host.name} no longer draining."
    return _change_host(
        host.pk, actor=actor, source=source, action="host.drain" if draining else "host.undrain",
        message=message, is_draining=draining,
    )


def update_host_settings(host: Host, *, cpu_overcommit, memory_overcommit, notes: str, actor=None,
                         source: str = "ui") -> Host:
    return _change_host(
        host.pk, actor=actor, source=source, action="host.settings",
        message=f"Host {host.name}: CPU overcommit {cpu_overcommit}, memory overcommit {memory_overcommit}.",
        cpu_overcommit=cpu_overcommit, memory_overcommit=memory_overcommit, notes=notes,
    )


def set_weigher(*, weigher: str, actor=None, source: str = "ui") -> None:
    from panel.hosts.models import PlacementPolicy  # noqa: PLC0415

    if weigher not in Host.Weigher.values:
        raise HostError(f"Unknown weigher {weigher!r}.", "weigher")
    with transaction.atomic():
        policy = PlacementPolicy.current()
        policy.weigher = weigher
        policy.save()
        audit.record(action="placement.policy", source=source, actor=actor,
                     message=f"New instances are placed by {policy.get_weigher_display().lower()}.",
                     data={"weigher": weigher})


# --- heartbeats ----------------------------------------------------------------------------

def _as_int(facts: dict[str, Any], key: str, default: int) -> int:
    try:
        value = int(facts.get(key, default))
    except (TypeError, ValueError):
        return default
    return value if value >= 0 else default


def record_heartbeat(*, host_name: str, facts: dict[str, Any]) -> Host | None:
    """Apply a host's report: capacity, what it can run, a graph point; online again if it was not."""
    if not isinstance(facts, dict):
        return None
    with transaction.atomic():
        host = Host.objects.select_for_update().filter(name=host_name).first()
        if host is None:
            return None
        host.mark_seen()
        host.cpus = _as_int(facts, "cpus", host.cpus)
        host.memory_mib = _as_int(facts, "memory_mib", host.memory_mib)
        host.disk_gib = _as_int(facts, "disk_gib", host.disk_gib)
        host.supports_containers = bool(facts.get("containers", host.supports_containers))
        host.supports_vms = bool(facts.get("vms", host.supports_vms))
        host.virt_type = str(facts.get("virt_type", host.virt_type))[:10]
        host.virt_reason = str(facts.get("virt_reason", host.virt_reason))[:300]
        host.facts = {**facts, "orphans": host.facts.get("orphans", [])}
        host.save()
        _sample(host, facts)
        # Every heartbeat, not only a change of status: staff pages redraw capacity from it.
        publish_host(host)
    return host


def _sample(host: Host, facts: dict[str, Any]) -> None:
    now = host.last_heartbeat
    if HostSample.objects.filter(host=host, at__gt=now - SAMPLE_INTERVAL).exists():
        return
    load = facts.get("load") or [0]
    instances = facts.get("instances") or {}
    HostSample.objects.create(
        host=host,
        at=now,
        load1=float(load[0]) if isinstance(load, list) and load else 0.0,
        memory_used_mib=max(0, host.memory_mib - _as_int(facts, "memory_available_mib", host.memory_mib)),
        disk_used_gib=max(0, host.disk_gib - _as_int(facts, "disk_free_gib", host.disk_gib)),
        instances_running=_as_int(instances, "running", 0) if isinstance(instances, dict) else 0,
    )


def expire_heartbeats() -> list[str]:
    """Mark hosts that have been silent longer than the timeout offline; returns their names.

    Their instances are shown as unknown (derived from the host's status, never a new state)
    until the host reports again, which brings it back online by itself.
    """
    deadline = timezone.now() - settings.BERTH_HEARTBEAT_TIMEOUT
    expired = []
    with transaction.atomic():
        for host in Host.objects.select_for_update().filter(
            status=Host.Status.ONLINE, last_heartbeat__lt=deadline
        ):
            host.status = Host.Status.OFFLINE
            host.save(update_fields=["status"])
            audit.record(
                action="host.offline", source=SYSTEM, target=host,
                message=f"No heartbeat from {host.name} since {host.last_heartbeat:%H:%M:%S} UTC; "
                "its instances show as unknown until it reports again.",
            )
            publish_host(host)
            expired.append(host.name)
    HostSample.objects.filter(at__lt=timezone.now() - SAMPLE_KEEP).delete()
    return expired


# --- refused placements ---------------------------------------------------------------------

def record_placement_failure(
    *, plan, customer, hostname: str, reasons: dict[str, str], actor=None, source: str = "ui"
) -> None:
    """Keep why an order could not be placed, for the dashboard and the host pages.

    Called after the ordering transaction rolled back. When the caller has an outer
    transaction (the API's idempotent ordering) the entry would roll back with it, so the
    panel worker writes it instead.
    """
    payload = {
        "plan_id": plan.pk, "customer_id": customer.pk, "hostname": hostname, "reasons": reasons,
        "actor_id": actor.pk if actor is not None and actor.is_authenticated else None,
        "source": source,
    }
    if connection.in_atomic_block:
        from panel.celery import app  # noqa: PLC0415

        app.send_task(PLACEMENT_FAILED_TASK, kwargs=payload, queue="panel")
    else:
        write_placement_failure(**payload)


def write_placement_failure(
    *, plan_id: int, customer_id: int, hostname: str, reasons: dict[str, str],
    actor_id: int | None, source: str,
) -> None:
    from django.contrib.auth import get_user_model  # noqa: PLC0415

    from panel.accounts.models import Customer  # noqa: PLC0415
    from panel.catalog.models import Plan  # noqa: PLC0415

    plan = Plan.objects.filter(pk=plan_id).first()
    customer = Customer.objects.filter(pk=customer_id).first()
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    why = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items())) or "no hosts"
    audit.record(
        action="placement.failed", source=source, actor=actor, target=plan,
        message=f"Could not place {hostname} ({plan.name if plan else plan_id}) for "
        f"{customer or customer_id}: {why}.",
        data={"plan": plan_id, "customer": customer_id, "hostname": hostname,
              "kind": plan.kind if plan else "", "reasons": reasons},
    )
