"""Console tickets for API clients: only for a running service that is not suspended."""

from __future__ import annotations

from panel.instances.models import Instance, InstanceState
from panel.instances.states import InstanceStateError
from panel.realtime.tickets import Ticket, issue_ticket


def console_url(instance: Instance, ticket: Ticket) -> str:
    return f"/ws/instances/{instance.pk}/console/?ticket={ticket.token}"


def open_console(*, instance: Instance, user_id: int | None) -> Ticket:
    """A one-time, 60-second ticket for the service's console WebSocket.

    Raises InstanceStateError unless the service is running (a suspended one never is).
    """
    if instance.state != InstanceState.RUNNING:
        raise InstanceStateError(
            instance, f"The console is only available while the service is running; it is {instance.state}."
        )
    return issue_ticket(instance_id=instance.pk, user_id=user_id)
