"""Single sign-on links: one-time, short-lived, for the billing system's "log in to panel"
button. Kept in Redis under the key's hash and redeemed with GETDEL, so a link works once."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone

from panel.instances.models import Instance

SSO_TTL = timedelta(minutes=5)


def _key(token: str) -> str:
    return "berth:sso:" + hashlib.sha256(token.encode()).hexdigest()


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@dataclass(frozen=True)
class SsoLink:
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class SsoClaims:
    user_id: int
    instance_id: int


def issue_sso_link(*, instance: Instance) -> SsoLink:
    """A link that logs the instance's owner in and shows the instance, once, for 5 minutes."""
    token = secrets.token_urlsafe(32)
    claims = {"user": instance.customer.user_id, "instance": instance.pk}
    client = _client()
    try:
        client.set(_key(token), json.dumps(claims), ex=int(SSO_TTL.total_seconds()))
    finally:
        client.close()
    return SsoLink(token=token, expires_at=timezone.now() + SSO_TTL)


def redeem_sso_token(*, token: str) -> SsoClaims | None:
    """The link's claims the first time; None when it is unknown, used or expired."""
    if not token or len(token) > 100:
        return None
    client = _client()
    try:
        raw = client.getdel(_key(token))
    finally:
        client.close()
    if not raw:
        return None
    claims = json.loads(raw)
    return SsoClaims(user_id=int(claims["user"]), instance_id=int(claims["instance"]))
