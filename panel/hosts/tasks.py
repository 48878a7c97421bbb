"""Panel-side tasks for hosts: heartbeats in, silence detected, reconciliation started."""

from typing import Any

from celery import shared_task

from panel.hosts import services
from panel.hosts.models import Host


@shared_task(name="berth.panel.host_heartbeat")
def host_heartbeat(host_name: str, facts: dict[str, Any]) -> None:
    services.record_heartbeat(host_name=host_name, facts=facts)


@shared_task(name="berth.panel.expire_heartbeats")
def expire_heartbeats() -> list[str]:
    return services.expire_heartbeats()


@shared_task(name="berth.panel.reconcile_hosts")
def reconcile_hosts() -> None:
    from panel.celery import app  # noqa: PLC0415

    for host in Host.objects.filter(status=Host.Status.ONLINE):
        app.send_task("berth.host.reconcile", queue=host.queue)
