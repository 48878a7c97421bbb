"""The one way live events leave the panel: typed payloads sent, after commit, to the groups
of everyone entitled to them (the instance's viewers, its owner, the staff)."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

STAFF_GROUP = "staff"


def instance_group(instance_id: int) -> str:
    return f"instance.{instance_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def host_group(host_id: int) -> str:
    return f"host.{host_id}"


def _send(groups: list[str], event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "berth.event", "event": event}
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:  # a dropped live event must never fail the state change itself
            logger.exception("could not publish %s to %s", event.get("type"), group)


def _send_on_commit(groups: list[str], event: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _send(groups, event))


def instance_payload(instance) -> dict[str, Any]:
    return {
        "id": instance.pk,
        "hostname": instance.hostname,
        "kind": instance.kind,
        "state": instance.state,
        "version": instance.state_version,
        "ipv4": instance.ipv4,
        "host": instance.host.name if instance.host_id else None,
        "error": instance.error,
    }


def publish_instance(instance, *, previous_state: str | None = None) -> None:
    event = {
        "type": "instance.state",
        "instance": instance_payload(instance),
        "previous_state": previous_state,
        "at": timezone.now().isoformat(),
    }
    groups = [instance_group(instance.pk), user_group(instance.customer.user_id), STAFF_GROUP]
    _send_on_commit(groups, event)
    from panel.webhooks.services import (
        enqueue_state_change,  # noqa: PLC0415 (webhooks → api → here)
    )

    enqueue_state_change(instance, previous_state=previous_state)


def publish_operation(operation) -> None:
    instance = operation.instance
    event = {
        "type": "operation",
        "operation": {
            "id": operation.pk,
            "instance": instance.pk,
            "action": operation.action,
            "state": operation.state,
            "progress": operation.progress,
            "error": operation.error,
        },
        "at": timezone.now().isoformat(),
    }
    groups = [instance_group(instance.pk), user_group(instance.customer.user_id), STAFF_GROUP]
    _send_on_commit(groups, event)


def publish_host(host) -> None:
    event = {
        "type": "host.status",
        "host": {"id": host.pk, "name": host.name, "status": host.status},
        "at": timezone.now().isoformat(),
    }
    _send_on_commit([host_group(host.pk), STAFF_GROUP], event)
