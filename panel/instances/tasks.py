"""Panel-side tasks (queue `panel`): hosts report operation progress and power states here.

While the database is unreachable, operation reports are retried with backoff
(DATABASE_RETRY): an outage delays them instead of losing them, and each is idempotent. Power
states are retried only briefly and reconcile reports not at all: applied late they would
describe the past, and the next reconcile (every 30 s) observes afresh.
"""

import logging
from datetime import datetime

from celery import shared_task

from panel.core.retry import DATABASE_ERRORS, DATABASE_RETRY, OBSERVATION_RETRY
from panel.instances.services import reaping, results

logger = logging.getLogger(__name__)


@shared_task(name="berth.panel.operation_started", **DATABASE_RETRY)
def operation_started(operation_id: int, progress: str = "") -> None:
    results.record_operation_started(operation_id, progress=progress)


@shared_task(name="berth.panel.operation_progress", **DATABASE_RETRY)
def operation_progress(operation_id: int, progress: str) -> None:
    results.record_operation_progress(operation_id, progress=progress)


@shared_task(name="berth.panel.operation_finished", **DATABASE_RETRY)
def operation_finished(
    operation_id: int, ok: bool, error: str = "", power_state: str | None = None, detail: str = "",
    result: dict | None = None,
) -> None:
    results.record_operation_finished(
        operation_id, ok=ok, error=error, power_state=power_state, detail=detail, result=result
    )


@shared_task(name="berth.panel.power_state", **OBSERVATION_RETRY)
def power_state(host_name: str, uuid: str, power_state: str, reason: str = "") -> None:
    results.record_power_state(host_name=host_name, uuid=uuid, power_state=power_state, reason=reason)


@shared_task(name="berth.panel.reap_stale_operations")
def reap_stale_operations() -> int:
    """End operations no host worker will finish (its worker died, or never took them up)."""
    return len(reaping.reap_operations())


@shared_task(name="berth.panel.reconcile_report")
def reconcile_report(host_name: str, instances: list[dict[str, str]],
                     requested_at: str | None = None) -> list[str]:
    from panel.instances.services.reconcile import reconcile_host  # noqa: PLC0415

    try:
        listed_after = datetime.fromisoformat(requested_at) if requested_at else None
    except (TypeError, ValueError):
        listed_after = None
    try:
        return reconcile_host(host_name=host_name, instances=instances, listed_after=listed_after)
    except DATABASE_ERRORS as exc:
        logger.warning("reconcile report of %s dropped, the database is unreachable: %s", host_name, exc)
        return []


@shared_task(name="berth.panel.step_report", **DATABASE_RETRY)
def step_report(operation_id: int, step: str, host_name: str, event: str, **report) -> None:
    """One step of a multi-step operation (a move between hosts) started, progressed or
    finished on ``host_name`` (``workers/hostworker.py``)."""
    from panel.instances.services.moves import record_step  # noqa: PLC0415

    record_step(operation_id, step=step, host_name=host_name, event=event,
                **{k: v for k, v in report.items() if not k.startswith("_")})
