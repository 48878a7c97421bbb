"""Writing audit entries: one function, used by every service that changes something."""

from typing import Any

from django.db.models import Model

from panel.audit.models import AuditEntry


def record(
    *,
    action: str,
    source: str,
    actor=None,
    target: Model | None = None,
    message: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    return AuditEntry.objects.create(
        action=action,
        source=source,
        actor=actor if actor is not None and actor.is_authenticated else None,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        message=message,
        data=data or {},
    )
