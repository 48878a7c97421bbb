"""Opening a VM's graphical console: what is checked beyond the console's access rule, and the
audit entry each opening leaves (the serial console's are in ``panel/realtime/services.py``)."""

from __future__ import annotations

from panel.audit.models import AuditEntry
from panel.audit.services import record
from panel.catalog.models import InstanceKind
from panel.instances.models import Instance


def open_vnc(*, instance_id: int, user=None) -> str:
    """Record that ``user`` (None: a console ticket's holder) opened the instance's screen.

    Call it once the console's access rule let the caller in. Returns "" when the screen may
    be opened, else why not (only VMs have one).
    """
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None or instance.kind != InstanceKind.VM:
        return "Only VMs have a graphical console."
    via = "session" if user is not None else "console ticket"
    record(
        action="console.vnc",
        source=AuditEntry.Source.UI if user is not None else AuditEntry.Source.API,
        actor=user,
        target=instance,
        message=f"Graphical console (VNC) of {instance.hostname} opened ({via}).",
        data={"via": "session" if user is not None else "ticket",
              "staff": bool(user is not None and user.is_staff)},
    )
    return ""
