"""The one way live events leave the panel: typed payloads sent, after commit, to everyone
entitled to them.

Each event is appended to the *feeds* of those who may see it: ``berth:events:<ns>:user.<id>``
(the instance's owner) and ``berth:events:<ns>:staff`` (every admin), capped Redis streams
(``<ns>`` tells apart panels that share a Redis database: see ``feed_stream``). A feed is
what ``/ws/events/`` follows (``panel/realtime/events.py``): the stream id of an entry is the
event's sequence number, so a browser that reconnects asks for what it missed. State changes
also go to the instance's own feed, ``berth:events:<ns>:instance.<id>``, which its serial consoles
follow (to close on suspension and termination), and to the channel-layer group
``instance.<id>``, which its graphical consoles join.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from panel.realtime.redis import get_sync_redis

logger = logging.getLogger(__name__)

STAFF_GROUP = "staff"
# Events a feed keeps for reconnecting browsers (approximately: Redis trims whole nodes).
STAFF_FEED_LENGTH = 10_000
USER_FEED_LENGTH = 1_000
INSTANCE_FEED_LENGTH = 100  # consoles only need what happened since they connected
FEED_TTL = 7 * 24 * 3600  # a customer's or instance's feed is dropped after a week without events


def instance_group(instance_id: int) -> str:
    """An instance's consoles: its feed (serial consoles) and channel-layer group (VNC)."""
    return f"instance.{instance_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


@functools.cache
def _namespace(database: str) -> str:
    return hashlib.sha256(database.encode()).hexdigest()[:8]


def feed_stream(group: str) -> str:
    """The Redis stream of ``group``'s feed. Groups are named after database ids (users,
    instances), which are unique within one database only, while one Redis database may
    serve several panels, each with its own database (test runs side by side: they once
    mixed two instances numbered alike into one feed, "provisioning" showing twice). The
    name of the panel's database keeps their feeds apart."""
    database = str(connections["default"].settings_dict.get("NAME") or "")
    return f"berth:events:{_namespace(database)}:{group}"


def _append_to_feeds(feeds: list[str], event: dict[str, Any]) -> None:
    body = json.dumps(event, separators=(",", ":"), cls=DjangoJSONEncoder)
    try:
        with get_sync_redis().pipeline(transaction=False) as pipe:
            for group in feeds:
                key = feed_stream(group)
                if group == STAFF_GROUP:
                    pipe.xadd(key, {"e": body}, maxlen=STAFF_FEED_LENGTH)
                    continue
                length = INSTANCE_FEED_LENGTH if group.startswith("instance.") else USER_FEED_LENGTH
                pipe.xadd(key, {"e": body}, maxlen=length)
                pipe.expire(key, FEED_TTL)
            pipe.execute()
    except RedisError:  # a dropped live event must never fail the state change itself
        logger.exception("could not publish %s", event.get("type"))


def _send_to_group(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": "berth.event", "event": event})
    except Exception:
        logger.exception("could not publish %s to %s", event.get("type"), group)


def _publish(event: dict[str, Any], *, feeds: list[str], instance_id: int | None = None) -> None:
    def send() -> None:
        _append_to_feeds(feeds, event)
        if instance_id is not None:
            _send_to_group(instance_group(instance_id), event)

    transaction.on_commit(send)


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
    _publish(event, feeds=[user_group(instance.customer.user_id), STAFF_GROUP, instance_group(instance.pk)],
             instance_id=instance.pk)
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
    _publish(event, feeds=[user_group(instance.customer.user_id), STAFF_GROUP])


def publish_host(host) -> None:
    event = {
        "type": "host.status",
        "host": {"id": host.pk, "name": host.name, "status": host.status},
        "at": timezone.now().isoformat(),
    }
    _publish(event, feeds=[STAFF_GROUP])
