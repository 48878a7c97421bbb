"""WebSocket consumers. They check who is asking, join groups and relay; they never talk to
drivers: consoles come from the host agent through Redis streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from panel.instances.models import Instance, InstanceState
from panel.realtime.publish import STAFF_GROUP, instance_group, user_group
from panel.realtime.redis import get_redis
from panel.realtime.tickets import redeem_ticket
from workers import console_streams

logger = logging.getLogger(__name__)

MAX_INPUT_FRAME = 64 * 1024


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def origin_allowed(scope) -> bool:
    """Browsers always send Origin on WebSockets; a foreign one means cross-site hijacking."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    host = origin.split("://", 1)[-1]
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


class EventsConsumer(AsyncWebsocketConsumer):
    """``/ws/events/``: state changes and operation progress for the caller's instances
    (staff: every instance and every host)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not origin_allowed(self.scope):
            await self.close()
            return
        self.groups_joined = [user_group(user.pk)]
        if user.is_staff:
            self.groups_joined.append(STAFF_GROUP)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        # Nothing to receive yet; ignore instead of failing on a stray frame.
        return

    async def berth_event(self, message):
        await self.send(text_data=json.dumps(message["event"]))


class ConsoleConsumer(AsyncWebsocketConsumer):
    """``/ws/instances/<id>/console/``: scrollback then live output as binary frames, input as
    binary frames, resize and state as JSON text frames (see api-contract.md)."""

    async def connect(self):
        self.instance_id = self.scope["url_route"]["kwargs"]["instance_id"]
        self.pump = None
        access = await self._authorize()
        if access is None:
            await self.close()  # before accept(): the handshake is refused with HTTP 403
            return
        self.uuid, self.host_name, state = access
        self.group = instance_group(self.instance_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"type": "state", "state": state}))
        self.pump = asyncio.create_task(self._pump_output())

    async def _authorize(self):
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        ticket = (query.get("ticket") or [""])[0]
        redis = get_redis()
        if ticket:
            claims = await redeem_ticket(redis, ticket)
            if not claims or claims.get("instance") != self.instance_id:
                return None
            return await self._load(user=None)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not origin_allowed(self.scope):
            return None
        return await self._load(user=user)

    @database_sync_to_async
    def _load(self, *, user):
        qs = Instance.objects.select_related("host", "customer").filter(pk=self.instance_id)
        if user is not None and not user.is_staff:
            qs = qs.filter(customer__user=user)
        instance = qs.first()
        if instance is None or instance.host is None:
            return None
        if instance.state == InstanceState.SUSPENDED and not (user is not None and user.is_staff):
            return None
        if instance.state == InstanceState.TERMINATED:
            return None
        return instance.uuid.hex, instance.host.name, instance.state

    async def _pump_output(self):
        redis = get_redis()
        key = console_streams.output_stream(self.uuid)
        last_id = "0-0"
        try:
            while True:
                response = await redis.xread({key: last_id}, count=512, block=15000)
                for _stream, entries in response or ():
                    chunks = []
                    for entry_id, fields in entries:
                        last_id = entry_id
                        chunks.append(fields.get(b"d", b""))
                    if chunks:
                        await self.send(bytes_data=b"".join(chunks))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("console relay for instance %s failed", self.instance_id)
            await self.send(text_data=json.dumps({"type": "error", "detail": "Console relay lost; reconnect."}))
            await self.close(code=1011)

    async def disconnect(self, code):
        if getattr(self, "pump", None) is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        redis = get_redis()
        channel = console_streams.input_channel(self.host_name)
        if bytes_data is not None:
            if len(bytes_data) > MAX_INPUT_FRAME:
                await self._error("Input frame too large.")
                return
            if bytes_data:
                await redis.publish(channel, console_streams.encode_input(self.uuid, bytes_data))
            return
        try:
            message = json.loads(text_data or "")
            if not isinstance(message, dict) or message.get("type") != "resize":
                raise ValueError
            rows, cols = int(message["rows"]), int(message["cols"])
            if not (1 <= rows <= 1000 and 1 <= cols <= 1000):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            await self._error('Text frames must be JSON like {"type": "resize", "cols": 80, "rows": 24}.')
            return
        await redis.publish(channel, console_streams.encode_resize(self.uuid, rows, cols))

    async def _error(self, detail: str):
        await self.send(text_data=json.dumps({"type": "error", "detail": detail}))

    async def berth_event(self, message):
        event = message["event"]
        if event.get("type") != "instance.state":
            return
        state = event["instance"]["state"]
        await self.send(text_data=json.dumps({"type": "state", "state": state}))
        if state in (InstanceState.SUSPENDED, InstanceState.TERMINATED):
            await self.close(code=4000)
