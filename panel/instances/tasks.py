"""Panel-side tasks (queue `panel`): hosts report operation progress and power states here."""

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from panel.instances.models import Operation
from panel.instances.services import results

logger = logging.getLogger(__name__)


@shared_task(name="berth.panel.operation_started")
def operation_started(operation_id: int, progress: str = "") -> None:
    results.record_operation_started(operation_id, progress=progress)


@shared_task(name="berth.panel.operation_progress")
def operation_progress(operation_id: int, progress: str) -> None:
    results.record_operation_progress(operation_id, progress=progress)


@shared_task(name="berth.panel.operation_finished")
def operation_finished(
    operation_id: int, ok: bool, error: str = "", power_state: str | None = None
) -> None:
    results.record_operation_finished(operation_id, ok=ok, error=error, power_state=power_state)


@shared_task(name="berth.panel.power_state")
def power_state(host_name: str, uuid: str, power_state: str, reason: str = "") -> None:
    results.record_power_state(host_name=host_name, uuid=uuid, power_state=power_state, reason=reason)


@shared_task(name="berth.panel.reap_stale_operations")
def reap_stale_operations() -> int:
    """Fail operations a host never finished (worker lost mid-task), so none stays running."""
    deadline = timezone.now() - settings.BERTH_OPERATION_TIMEOUT
    stale = Operation.objects.filter(
        state__in=(Operation.State.QUEUED, Operation.State.RUNNING), created_at__lt=deadline
    ).values_list("pk", flat=True)
    for operation_id in stale:
        results.record_operation_finished(
            operation_id, ok=False, error="The host did not finish this operation in time."
        )
    return len(stale)


@shared_task(name="berth.panel.reconcile_report")
def reconcile_report(host_name: str, instances: list[dict[str, str]]) -> list[str]:
    from panel.instances.services.reconcile import reconcile_host  # noqa: PLC0415

    return reconcile_host(host_name=host_name, instances=instances)
