"""Checking that a host's report comes from that host, before the panel acts on it.

Hosts report by sending tasks to the ``panel`` queue. Their Redis users keep them out of each
other's keys, but any host may write to that queue, so a report's content (``host_name``, an
operation id) proves nothing by itself. A host with a credential signs every report
(``workers.config.sign_reports``: HMAC keyed with the SHA-256 of its secret, which the panel
keeps as ``Host.credential_hash``); a report about such a host is carried out only when that
host signed it. Hosts without a credential (enrolled before credentials, or test hosts that
share the panel's Redis login) are trusted as before.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from panel.core.retry import DATABASE_ERRORS
from panel.hosts.models import Host
from workers.config import SIGNATURE_HEADER, SIGNER_HEADER, report_signature

logger = logging.getLogger(__name__)

# The panel tasks hosts send.
REPORT_TASKS = frozenset({
    "berth.panel.host_heartbeat",
    "berth.panel.operation_started",
    "berth.panel.operation_progress",
    "berth.panel.operation_finished",
    "berth.panel.power_state",
    "berth.panel.reconcile_report",
    "berth.panel.usage_samples",
    "berth.panel.step_report",
})


class ReportRefused(Exception):
    """The report claims to be about a host that did not sign it."""


def claimed_host(kwargs: dict[str, Any]) -> str | None:
    """The host a report is about: named, or the host of the operation it reports on."""
    if isinstance(kwargs.get("host_name"), str):
        return kwargs["host_name"]
    if "operation_id" in kwargs:
        from panel.instances.models import Operation  # noqa: PLC0415 (instances imports hosts)

        return (
            Operation.objects.filter(pk=kwargs["operation_id"]).values_list("instance__host__name", flat=True).first()
        )
    return None


def check_report(*, task: str, task_id: str, args: Any, kwargs: dict[str, Any], headers: dict[str, Any]) -> None:
    """Raise ReportRefused unless the host the report is about signed it (when it has a credential)."""
    name = claimed_host(kwargs)
    if name is None:
        return
    credential = Host.objects.filter(name=name).values_list("credential_hash", flat=True).first()
    if not credential:
        return
    signer = headers.get(SIGNER_HEADER)
    if signer != name:
        raise ReportRefused(f"a report about host {name} was not signed by it (signer: {signer or 'none'})")
    expected = report_signature(credential.encode(), task=task, task_id=task_id, args=args, kwargs=kwargs)
    if not hmac.compare_digest(expected, str(headers.get(SIGNATURE_HEADER) or "")):
        raise ReportRefused(f"the signature of a report from host {name} does not match its credential")


def _headers(request) -> dict[str, Any]:
    nested = getattr(request, "headers", None) or {}
    return {key: getattr(request, key, None) or nested.get(key) for key in (SIGNER_HEADER, SIGNATURE_HEADER)}


def _verified(call: Callable) -> Callable:
    def __call__(task, *args, **kwargs):
        request = task.request
        if not request.called_directly:
            try:
                check_report(task=task.name, task_id=request.id, args=args, kwargs=kwargs, headers=_headers(request))
            except ReportRefused as exc:
                logger.warning("%s refused: %s", task.name, exc)
                return None
            except DATABASE_ERRORS as exc:
                # Unchecked is never carried out: wait for the database like the task itself would.
                raise task.retry(exc=exc, countdown=2) from exc
        return call(task, *args, **kwargs)

    return __call__


class HostReportAnnotation:
    """Celery task annotation (settings.CELERY_TASK_ANNOTATIONS): every report task checks
    its sender before it runs."""

    def annotate(self, task) -> dict[str, Callable] | None:
        return {"@__call__": _verified} if task.name in REPORT_TASKS else None

    def annotate_any(self) -> None:
        return None
