"""Console tickets: one-time, 60-second credentials for a console WebSocket (like Proxmox's
vncproxy ticket), so billing client areas and scripts can attach without a session."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.utils import timezone

TICKET_TTL = timedelta(seconds=60)


def _key(ticket: str) -> str:
    return f"berth:console-ticket:{ticket}"


@dataclass(frozen=True)
class Ticket:
    token: str
    expires_at: datetime


def issue_ticket(*, instance_id: int, user_id: int | None) -> Ticket:
    token = secrets.token_urlsafe(32)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.set(
            _key(token),
            json.dumps({"instance": instance_id, "user": user_id}),
            ex=int(TICKET_TTL.total_seconds()),
        )
    finally:
        client.close()
    return Ticket(token=token, expires_at=timezone.now() + TICKET_TTL)


async def redeem_ticket(client: aioredis.Redis, token: str) -> dict | None:
    """The ticket's claims, once: a second redeem (or an expired ticket) gives None."""
    if not token or len(token) > 100:
        return None
    raw = await client.getdel(_key(token))
    return json.loads(raw) if raw else None
