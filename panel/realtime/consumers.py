"""WebSocket consumers. They check who is asking, call one service and relay; they never talk
to drivers. Console output and event feeds come from Redis streams through the process's
stream hub (``panel/realtime/hub.py``); console input goes to the host's agent over pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import connections
from django.http.request import split_domain_port, validate_host
from redis.exceptions import RedisError

from panel.instances.models import InstanceState
from panel.realtime.consoles import console_frames
from panel.realtime.events import event_messages, feed_group, feed_tail, instance_states
from panel.realtime.publish import instance_group
from panel.realtime.redis import get_redis
from panel.realtime.services import ConsoleAccess, attach_console, console_access
from panel.realtime.tickets import redeem_ticket
from workers import console_streams

logger = logging.getLogger(__name__)

MAX_INPUT_FRAME = 64 * 1024
MAX_CONTROL_FRAME = 256
CLOSE_ENDED = 4000  # the instance was suspended or terminated
# A channel-layer alias that is not configured: Channels then gives a consumer no layer, so it
# neither polls the layer for each socket nor ends the socket when that poll fails.
NO_CHANNEL_LAYER = "none"


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


@database_sync_to_async
def release_database() -> None:
    """Close the database connections the caller's context opened (this runs inside it).
    A console needs the database only to connect, then lives for hours; Channels' cleanup
    around ``database_sync_to_async`` runs outside that context and misses them (and its
    per-message cleanup is skipped here), so each open console would keep a connection."""
    connections.close_all()


def _resize(text: str) -> tuple[int, int] | None:
    """(rows, cols) of a resize message; None for anything else (a resize is a few dozen
    bytes: longer text is not parsed at all, so no deeply nested JSON reaches the parser)."""
    if len(text) > MAX_CONTROL_FRAME:
        return None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # json.loads accepts NaN and Infinity, too
        return None
    if not isinstance(message, dict) or message.get("type") != "resize":
        return None
    rows, cols = message.get("rows"), message.get("cols")
    if not all(type(n) is int and 1 <= n <= 1000 for n in (rows, cols)):  # not bool, not float
        return None
    return rows, cols


class RelayConsumer(AsyncWebsocketConsumer):
    """Base of the consumers: query parsing, relaying frames, and frames from the client
    dispatched directly: Channels closes stale database connections before every message,
    a hop to its one database thread per keystroke, shared with every other socket of the
    process (these consumers release the database after connecting instead)."""

    async def dispatch(self, message):
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    def query(self) -> dict[str, str]:
        raw = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        return {key: values[0] for key, values in raw.items()}

    async def relay(self, frames, what: str) -> None:
        """Send every frame (bytes: binary; str: text; dict: JSON text) until the source ends
        or the socket closes; ``send`` waits while the client's TCP buffer is full, which is
        what bounds a slow client's share of this process's memory."""
        try:
            async with contextlib.aclosing(frames):
                async for frame in frames:
                    if isinstance(frame, bytes):
                        await self.send(bytes_data=frame)
                    elif isinstance(frame, str):
                        await self.send(text_data=frame)
                    else:
                        await self.send(text_data=json.dumps(frame))
        except asyncio.CancelledError:
            raise
        except OSError:
            pass  # the client went away (uvicorn's ClientDisconnected)
        except Exception:
            logger.exception("%s relay failed", what)
            with contextlib.suppress(Exception):
                await self.send(text_data=json.dumps({"type": "error", "detail": "Relay lost; reconnect."}))
                await self.close(code=1011)

    async def stop_relay(self) -> None:
        pump = getattr(self, "pump", None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump


class EventsConsumer(RelayConsumer):
    """``/ws/events/``: the caller's feed (see ``panel/realtime/events.py``): state changes and
    operation progress of their instances (staff: every instance and every host)."""

    channel_layer_alias = NO_CHANNEL_LAYER  # the feed comes from its Redis stream

    async def connect(self):
        self.pump = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not origin_allowed(self.scope):
            await self.close()
            return
        await self.accept()
        messages = event_messages(feed_group(user), self.query().get("since"))
        self.pump = asyncio.create_task(self.relay(messages, "events"))

    async def disconnect(self, code):
        await self.stop_relay()

    async def receive(self, text_data=None, bytes_data=None):
        return  # nothing to receive; a stray frame is ignored rather than failing


class ConsoleConsumer(RelayConsumer):
    """``/ws/instances/<id>/console/``: scrollback then live output as binary frames, input as
    binary frames, resize and control messages as JSON text frames (api-contract.md,
    ``panel/realtime/consoles.py``). ``?mode=ro`` watches without typing; ``?resume=`` picks
    up after a reconnect."""

    # No channel layer: output and state changes come from Redis streams through the hub,
    # which rides out a Redis restart; a channel-layer receive would end the socket instead.
    channel_layer_alias = NO_CHANNEL_LAYER

    async def connect(self):
        self.instance_id = self.scope["url_route"]["kwargs"]["instance_id"]
        self.pump = self.watch = None
        query = self.query()
        mode = query.get("mode", "rw")
        if mode not in ("rw", "ro"):
            await self.close()  # before accept(): the handshake is refused with HTTP 403
            return
        # Where the instance's feed stands *before* access is checked: a suspension committed
        # right after the check is in the feed after this point, so it cannot slip through.
        states_after = await feed_tail(instance_group(self.instance_id))
        access = await self._attach(query, read_only=mode == "ro")
        await release_database()
        if access is None:
            await self.close()
            return
        self.access: ConsoleAccess = access
        self.read_only = mode == "ro"
        self.uuid, self.host_name = access.uuid, access.host_name
        await self.accept()
        await self.send(text_data=json.dumps({"type": "state", "state": access.state}))
        resume = None
        if query.get("resume"):
            try:
                resume = console_streams.ResumePoint.parse(query["resume"])
            except ValueError:
                await self._error("resume must be <boot>:<offset> from a cursor message; "
                                  "sending the whole scrollback.")
                await self.send(text_data=json.dumps({"type": "reset"}))
        self.pump = asyncio.create_task(
            self.relay(console_frames(self.host_name, self.uuid, resume), f"console of instance {self.instance_id}"))
        self.watch = asyncio.create_task(self._watch_state(states_after))

    async def _watch_state(self, after: str) -> None:
        """Tell the viewer about state changes; close when the instance is terminated, or
        suspended for a viewer who is not staff."""
        version = self.access.version
        async with contextlib.aclosing(instance_states(self.instance_id, after)) as states:
            async for event_version, state in states:
                if event_version <= version:
                    continue  # older than what the access check saw
                version = event_version
                with contextlib.suppress(OSError):
                    await self.send(text_data=json.dumps({"type": "state", "state": state}))
                if state == InstanceState.TERMINATED or (state == InstanceState.SUSPENDED and not self.access.staff):
                    await self.close(code=CLOSE_ENDED)
                    return

    async def _caller(self, ticket: str):
        """("ticket", claims) or ("session", user), or None when neither is valid."""
        if ticket:
            try:
                claims = await redeem_ticket(get_redis(), ticket)
            except RedisError:
                logger.warning("console ticket not checked: Redis unavailable")
                return None
            if not claims or claims.get("instance") != self.instance_id:
                return None
            return "ticket", claims
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not origin_allowed(self.scope):
            return None
        return "session", user

    async def _attach(self, query: dict[str, str], *, read_only: bool) -> ConsoleAccess | None:
        caller = await self._caller(query.get("ticket", ""))
        if caller is None:
            return None
        how, who = caller
        if how == "ticket":
            return await database_sync_to_async(attach_console)(
                instance_id=self.instance_id, ticket_user_id=who.get("user"), read_only=read_only)
        return await database_sync_to_async(attach_console)(
            instance_id=self.instance_id, user=who, read_only=read_only)

    async def _authorize(self) -> tuple[str, str, str] | None:
        """(uuid, host name, state) when the caller may open this instance's consoles; for
        consumers of the other consoles of an instance (VNC), which audit on their own."""
        caller = await self._caller(self.query().get("ticket", ""))
        if caller is None:
            return None
        how, who = caller
        access = await database_sync_to_async(console_access)(
            instance_id=self.instance_id, user=who if how == "session" else None)
        return None if access is None else (access.uuid, access.host_name, access.state)

    async def disconnect(self, code):
        await self.stop_relay()
        watch = getattr(self, "watch", None)
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch

    async def receive(self, text_data=None, bytes_data=None):
        if self.read_only:
            await self._error("This console is open read-only: input and resizes are ignored.")
            return
        if bytes_data is not None:
            if len(bytes_data) > MAX_INPUT_FRAME:
                await self._error("Input frame too large.")
            elif bytes_data:
                await self._to_agent(console_streams.encode_input(self.uuid, bytes_data))
            return
        size = _resize(text_data or "")
        if size is None:
            await self._error('Text frames must be JSON like {"type": "resize", "cols": 80, "rows": 24}.')
            return
        await self._to_agent(console_streams.encode_resize(self.uuid, *size))

    async def _to_agent(self, message: bytes) -> None:
        try:
            await get_redis().publish(console_streams.input_channel(self.host_name), message)
        except RedisError:
            await self._error("The console is unreachable for a moment; that input was lost.")

    async def _error(self, detail: str):
        await self.send(text_data=json.dumps({"type": "error", "detail": detail}))
