"""``/ws/instances/<id>/vnc/``: a VM's graphical console for noVNC, relayed by the host agent.

Same access rules as the serial console (owner or staff with a session, or a one-time
ticket; suspended and terminated instances refused) — it *is* the console consumer's check —
and every opening is audited (``vnc_access.open_vnc``).
The consumer never reaches libvirt or the host: it asks the host's agent to open a session
and moves raw RFB bytes between the WebSocket (binary frames only, as noVNC expects) and the
session's two Redis lists (``workers/vnc_streams.py`` explains why lists and how it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import redis.asyncio as aioredis
from channels import DEFAULT_CHANNEL_LAYER
from channels.db import database_sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from panel.instances.models import InstanceState
from panel.realtime.consumers import ConsoleConsumer
from panel.realtime.publish import instance_group
from panel.realtime.vnc_access import open_vnc
from workers import console_streams, vnc_streams

logger = logging.getLogger(__name__)

MAX_CLIENT_FRAME = 1024 * 1024  # RFB client messages are small; a pasted clipboard is the most

# Close codes (4000-4999 are the application's): noVNC shows the reason to the viewer.
CLOSE_NOT_A_VM = 4400
CLOSE_UNAVAILABLE = 4404
CLOSE_ENDED = 4000


class VncConsumer(ConsoleConsumer):
    """RFB between noVNC and the VM's VNC server on its host, through the host's agent."""

    # The serial console needs no channel layer; this one joins the instance's group.
    channel_layer_alias = DEFAULT_CHANNEL_LAYER

    async def connect(self):
        self.instance_id = self.scope["url_route"]["kwargs"]["instance_id"]
        self.session = None
        self.redis = None
        self.jobs: list[asyncio.Task] = []
        access = await self._authorize()  # the serial console's rule, word for word
        if access is None:
            await self.close()  # before accept(): the handshake is refused with HTTP 403
            return
        self.uuid, self.host_name, _state = access
        user = self.scope.get("user")
        self.viewer = user if user is not None and user.is_authenticated and \
            not self.query().get("ticket") else None
        await self.accept()
        refused = await database_sync_to_async(open_vnc)(instance_id=self.instance_id,
                                                         user=self.viewer)
        if refused:
            await self.close(code=CLOSE_NOT_A_VM, reason=refused)
            return
        try:
            opened, why = await self._open_session()
        except RedisError:
            opened, why = False, "The screen is unreachable for a moment; try again."
        if not opened:
            await self.close(code=CLOSE_UNAVAILABLE, reason=why[:120])
            return
        self.group = instance_group(self.instance_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.jobs = [asyncio.create_task(self._pump_screen()),
                     asyncio.create_task(self._keep_alive())]

    async def _open_session(self) -> tuple[bool, str]:
        # A connection of the viewer's own: its blocking reads must not hold the shared pool's.
        self.redis = redis = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=vnc_streams.OPEN_TIMEOUT + 10)
        host, session = self.host_name, secrets.token_hex(16)
        await redis.set(vnc_streams.alive_key(host, session), "1", ex=vnc_streams.KEY_TTL)
        await redis.publish(console_streams.agent_channel(host),
                            vnc_streams.open_command(uuid=self.uuid, session=session))
        reply = await redis.blpop([vnc_streams.reply_key(host, session)],
                                  timeout=vnc_streams.OPEN_TIMEOUT)
        opened, why = vnc_streams.parse_reply(reply[1] if reply else None)
        if opened:
            self.session = session
        else:
            await redis.delete(vnc_streams.alive_key(host, session))
        return opened, why

    async def _pump_screen(self) -> None:
        """Agent → browser: every chunk the VNC server sent, in order, as binary frames."""
        redis = self.redis
        key = vnc_streams.to_viewer(self.host_name, self.session)
        try:
            while True:
                item = await redis.blpop([key], timeout=vnc_streams.BLOCK_SECONDS)
                if item is None:
                    continue
                # Take what else is queued too: fewer, larger frames for a busy screen.
                chunks = [item[1], *(await redis.lpop(key, vnc_streams.MAX_QUEUED) or [])]
                ended = vnc_streams.EOF in chunks
                data = b"".join(chunks[:chunks.index(vnc_streams.EOF)] if ended else chunks)
                if data:
                    await self.send(bytes_data=data)
                if ended:
                    await self.close(code=CLOSE_ENDED, reason="The VM's screen closed.")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("VNC relay for instance %s failed", self.instance_id)
            await self.close(code=1011)

    async def _keep_alive(self) -> None:
        redis = self.redis
        while True:
            await redis.expire(vnc_streams.alive_key(self.host_name, self.session),
                               vnc_streams.KEY_TTL)
            await asyncio.sleep(vnc_streams.ALIVE_REFRESH)

    async def receive(self, text_data=None, bytes_data=None):
        if self.session is None or not bytes_data:
            return  # noVNC sends only binary frames; anything else is not RFB
        if len(bytes_data) > MAX_CLIENT_FRAME:
            await self.close(code=1009)
            return
        redis = self.redis
        key = vnc_streams.to_server(self.host_name, self.session)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, bytes_data)
            pipe.expire(key, vnc_streams.KEY_TTL)
            await pipe.execute()

    async def disconnect(self, code):
        for job in getattr(self, "jobs", []):
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        if getattr(self, "session", None):
            redis = self.redis
            host, session = self.host_name, self.session
            with contextlib.suppress(Exception):
                await redis.rpush(vnc_streams.to_server(host, session), vnc_streams.EOF)
                await redis.expire(vnc_streams.to_server(host, session), vnc_streams.KEY_TTL)
                await redis.delete(vnc_streams.alive_key(host, session),
                                   vnc_streams.to_viewer(host, session))
            self.session = None
        if getattr(self, "redis", None) is not None:
            await self.redis.aclose()
            self.redis = None
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def berth_event(self, message):
        # No JSON on this socket (noVNC reads every frame as RFB): a VM that is suspended or
        # terminated loses its screen by the socket closing.
        event = message["event"]
        if event.get("type") != "instance.state":
            return
        state = event["instance"]["state"]
        staff = self.viewer is not None and self.viewer.is_staff
        if state == InstanceState.TERMINATED or (state == InstanceState.SUSPENDED and not staff):
            await self.close(code=CLOSE_ENDED, reason=f"The instance is {state}.")
