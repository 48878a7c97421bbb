"""The instance state machine: one table of allowed moves, one function that applies them.

Host-side work is tracked by Operations; this module only says which instance states may
follow which, and which actions a customer may request in which state.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from panel.instances.models import Instance, InstanceState, Operation
from panel.usage.services import record_state_change

S = InstanceState
A = Operation.Action

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.PROVISIONING, S.ERROR, S.TERMINATING}),
    S.PROVISIONING: frozenset({S.RUNNING, S.STOPPED, S.ERROR, S.TERMINATING}),
    S.RUNNING: frozenset({S.STOPPED, S.REBOOTING, S.PROVISIONING, S.SUSPENDED, S.TERMINATING, S.ERROR}),
    S.STOPPED: frozenset({S.RUNNING, S.PROVISIONING, S.SUSPENDED, S.TERMINATING, S.ERROR}),
    S.REBOOTING: frozenset({S.RUNNING, S.STOPPED, S.ERROR, S.TERMINATING}),
    S.SUSPENDED: frozenset({S.RUNNING, S.STOPPED, S.TERMINATING, S.ERROR}),
    S.ERROR: frozenset({S.RUNNING, S.STOPPED, S.PROVISIONING, S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED, S.ERROR}),
    S.TERMINATED: frozenset(),
}

# Which states an action may be requested from.
ACTION_FROM_STATES: dict[str, frozenset[str]] = {
    A.START: frozenset({S.STOPPED, S.ERROR}),
    A.STOP: frozenset({S.RUNNING, S.ERROR}),
    A.REBOOT: frozenset({S.RUNNING}),
    A.REBUILD: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    A.CHANGE_PLAN: frozenset({S.RUNNING, S.STOPPED}),
    A.SUSPEND: frozenset({S.RUNNING, S.STOPPED}),
    A.UNSUSPEND: frozenset({S.SUSPENDED}),
    A.TERMINATE: frozenset(set(S.values) - {S.TERMINATING, S.TERMINATED}),
    # Application containers: another image version, or back to the one before (from error
    # too: a new version is how a broken application gets fixed).
    A.UPGRADE: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    A.ROLLBACK: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    A.SNAPSHOT: frozenset({S.RUNNING, S.STOPPED}),
    A.RESTORE_SNAPSHOT: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    A.DELETE_SNAPSHOT: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    A.BACKUP: frozenset({S.RUNNING, S.STOPPED}),
    A.RESTORE_BACKUP: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    # Cold migration (panel/instances/services/moves.py): a running instance is stopped for
    # the copy and started again on the target; a suspended one moves and stays off.
    A.MOVE: frozenset({S.RUNNING, S.STOPPED, S.SUSPENDED}),
}

# Actions a customer may take on their own instance (suspend/unsuspend belong to billing/admins).
CUSTOMER_ACTIONS = (A.START, A.STOP, A.REBOOT, A.REBUILD, A.TERMINATE, A.UPGRADE, A.ROLLBACK)


class InstanceStateError(Exception):
    """The requested move is not allowed from the instance's current state."""

    def __init__(self, instance: Instance, message: str):
        super().__init__(message)
        self.instance = instance


def can_request(instance: Instance, action: str) -> bool:
    return instance.state in ACTION_FROM_STATES[action]


def transition(instance_id: int, to_state: str, *, error: str = "") -> Instance:
    """Move an instance to ``to_state`` under a row lock; calling it twice is a no-op.

    Returns the instance as saved. Raises InstanceStateError for a move the table forbids.
    """
    from panel.realtime.publish import (
        publish_instance,  # noqa: PLC0415 (cycle: publish imports models)
    )

    with transaction.atomic():
        instance = Instance.objects.select_for_update().get(pk=instance_id)
        if instance.state == to_state:
            return instance
        if to_state not in ALLOWED_TRANSITIONS[instance.state]:
            raise InstanceStateError(
                instance, f"Cannot go from {instance.state} to {to_state}."
            )
        previous = instance.state
        instance.state = to_state
        instance.state_version += 1
        fields = ["state", "state_version", "updated_at"]
        if to_state == S.RUNNING and previous != S.RUNNING:
            instance.started_at = timezone.now()
            fields.append("started_at")
        if to_state == S.ERROR:
            instance.error = error
            fields.append("error")
        elif instance.error and to_state in (S.RUNNING, S.STOPPED):
            instance.error = ""
            fields.append("error")
        if to_state == S.TERMINATED:
            instance.terminated_at = timezone.now()
            fields.append("terminated_at")
        instance.save(update_fields=fields)
        record_state_change(instance=instance, previous_state=previous)
        publish_instance(instance, previous_state=previous)
        return instance
