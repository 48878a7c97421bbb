"""Panel-side tasks for hosts: heartbeats in, silence detected, reconciliation started,
credentials kept in Redis, refused placements recorded.

While the database is unreachable, records that would be lost are retried with backoff
(DATABASE_RETRY); a heartbeat is not: the next one, seconds later, says the same and more.
"""

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from panel.core.retry import DATABASE_ERRORS, DATABASE_RETRY
from panel.hosts import credentials, services
from panel.hosts.models import Host

logger = logging.getLogger(__name__)


@shared_task(name="berth.panel.host_heartbeat")
def host_heartbeat(host_name: str, facts: dict[str, Any]) -> None:
    try:
        services.record_heartbeat(host_name=host_name, facts=facts)
    except DATABASE_ERRORS as exc:
        logger.warning("heartbeat of %s dropped, the database is unreachable: %s", host_name, exc)


@shared_task(name="berth.panel.expire_heartbeats")
def expire_heartbeats() -> list[str]:
    return services.expire_heartbeats()


@shared_task(name="berth.panel.reconcile_hosts")
def reconcile_hosts() -> None:
    from panel.celery import app  # noqa: PLC0415

    # The host lists what it runs after this moment; the panel applies its report only to
    # instances unchanged since (reconcile.py): not to one an operation settled meanwhile.
    requested_at = timezone.now().isoformat()
    for host in Host.objects.filter(status=Host.Status.ONLINE):
        app.send_task("berth.host.reconcile", kwargs={"requested_at": requested_at}, queue=host.queue)


@shared_task(name="berth.panel.sync_host_credentials")
def sync_host_credentials() -> int:
    return credentials.sync_credentials()


@shared_task(name=services.PLACEMENT_FAILED_TASK, **DATABASE_RETRY)
def placement_failed(
    plan_id: int, customer_id: int, hostname: str, reasons: dict[str, str], actor_id: int | None,
    source: str,
) -> None:
    services.write_placement_failure(
        plan_id=plan_id, customer_id=customer_id, hostname=hostname, reasons=reasons,
        actor_id=actor_id, source=source,
    )
