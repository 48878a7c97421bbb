"""Registering hosts and keeping their status: heartbeats in, offline after a silence."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.hosts.models import Host, IpPool
from panel.realtime.publish import publish_host


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


def host_environment(host: Host) -> dict[str, str]:
    """What a host's worker and agent need to know, as environment variables."""
    pool = host.ip_pool
    return {
        "BERTH_HOST_NAME": host.name,
        "BERTH_REDIS_URL": settings.REDIS_URL,
        "BERTH_STATE_DIR": host.state_dir,
        "BERTH_IMAGE_DIR": str(settings.BERTH_IMAGE_DIR),
        "BERTH_BRIDGE": host.bridge,
        "BERTH_GATEWAY": pool.gateway,
        "BERTH_PREFIXLEN": str(pool.prefixlen),
        "BERTH_UID_BASE": str(host.uid_base),
        "BERTH_UID_SLOTS": str(host.uid_slots),
    }


def record_heartbeat(*, host_name: str, facts: dict[str, Any]) -> Host | None:
    with transaction.atomic():
        host = Host.objects.select_for_update().filter(name=host_name).first()
        if host is None:
            return None
        was_online = host.status == Host.Status.ONLINE
        host.mark_seen()
        host.cpus = int(facts.get("cpus", host.cpus))
        host.memory_mib = int(facts.get("memory_mib", host.memory_mib))
        host.disk_gib = int(facts.get("disk_gib", host.disk_gib))
        host.supports_containers = bool(facts.get("containers", host.supports_containers))
        host.supports_vms = bool(facts.get("vms", host.supports_vms))
        host.virt_type = str(facts.get("virt_type", host.virt_type))[:10]
        host.virt_reason = str(facts.get("virt_reason", host.virt_reason))[:300]
        host.facts = {**facts, "orphans": host.facts.get("orphans", [])}
        host.save()
        if not was_online:
            publish_host(host)
    return host


def expire_heartbeats() -> list[str]:
    """Mark hosts that have been silent longer than the timeout offline; returns their names."""
    deadline = timezone.now() - settings.BERTH_HEARTBEAT_TIMEOUT
    expired = []
    with transaction.atomic():
        for host in Host.objects.select_for_update().filter(
            status=Host.Status.ONLINE, last_heartbeat__lt=deadline
        ):
            host.status = Host.Status.OFFLINE
            host.save(update_fields=["status"])
            publish_host(host)
            expired.append(host.name)
    return expired
