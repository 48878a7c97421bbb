"""Who may open an instance's console, and the audit entry every attach leaves."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model

from panel.audit.models import AuditEntry
from panel.audit.services import record
from panel.instances.models import Instance, InstanceState

VIA_SESSION = "session"
VIA_TICKET = "ticket"


@dataclass(frozen=True)
class ConsoleAccess:
    instance_id: int
    uuid: str
    host_name: str
    state: str
    version: int  # of the state: later state events carry higher ones
    staff: bool  # staff keep watching a suspended instance; its owner does not


def _viewable(instance_id: int, user) -> Instance | None:
    qs = Instance.objects.select_related("host").filter(pk=instance_id)
    staff = user is not None and user.is_staff
    if user is not None and not staff:
        qs = qs.filter(customer__user=user)
    instance = qs.first()
    if instance is None or instance.host is None or instance.state == InstanceState.TERMINATED:
        return None
    if instance.state == InstanceState.SUSPENDED and not staff:
        return None
    return instance


def _access(instance: Instance, user) -> ConsoleAccess:
    return ConsoleAccess(instance.pk, instance.uuid.hex, instance.host.name, instance.state,
                         instance.state_version, staff=user is not None and user.is_staff)


def console_access(*, instance_id: int, user=None) -> ConsoleAccess | None:
    """The console of ``instance_id`` for ``user`` (None: the holder of a valid ticket for
    it): owners and staff only; never a terminated instance, nor a suspended one but to staff."""
    instance = _viewable(instance_id, user)
    return None if instance is None else _access(instance, user)


def attach_console(*, instance_id: int, user=None, ticket_user_id: int | None = None,
                   read_only: bool) -> ConsoleAccess | None:
    """Check access as ``console_access`` does and, when granted, write the audit entry.
    ``user`` comes from the session; a ticket's holder is recorded as the ticket's user."""
    instance = _viewable(instance_id, user)
    if instance is None:
        return None
    access = _access(instance, user)
    via = VIA_SESSION if user is not None else VIA_TICKET
    actor = user
    if actor is None and ticket_user_id is not None:
        actor = get_user_model().objects.filter(pk=ticket_user_id).first()
    record(
        action="console.attach",
        source=AuditEntry.Source.UI if via == VIA_SESSION else AuditEntry.Source.API,
        actor=actor,
        target=instance,
        message=f"Console of {instance.hostname} opened{' read-only' if read_only else ''} "
                f"({'session' if via == VIA_SESSION else 'console ticket'}).",
        data={"via": via, "read_only": read_only, "staff": access.staff},
    )
    return access
