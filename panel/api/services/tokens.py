"""API tokens: issued once in clear, stored as a SHA-256 hash, looked up by that hash."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import timedelta

from django.utils import timezone

from panel.accounts.models import Customer
from panel.api.models import ApiToken

KEY_PREFIX = "berth_"
DISPLAY_CHARS = 12
# last_used_at is a hint for the admin, not an audit trail: one write a minute at most keeps
# reads from turning into writes.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Tokens found are remembered by each process for a few seconds: the lookup is a third of a
# GET's cost. A revocation takes effect at once in the process that made it, and within
# this time everywhere else.
TOKEN_CACHE_SECONDS = 10.0
_recent: dict[str, tuple[float, ApiToken]] = {}
_recent_lock = threading.Lock()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_token(
    *, name: str, scope: str, customer: Customer | None = None
) -> tuple[ApiToken, str]:
    """A new token and its key; the key is never stored and cannot be shown again."""
    if scope == ApiToken.Scope.CUSTOMER and customer is None:
        raise ValueError("a customer token needs a customer")
    if scope == ApiToken.Scope.BILLING and customer is not None:
        raise ValueError("a billing token acts for every customer; give no customer")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name, scope=scope, customer=customer, key_hash=hash_key(key),
        prefix=key[:DISPLAY_CHARS],
    )
    return token, key


def authenticate_key(key: str) -> ApiToken | None:
    """The active token for ``key``, or None."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key)
    cached = _recent.get(digest)
    if cached is not None and time.monotonic() - cached[0] < TOKEN_CACHE_SECONDS:
        token = cached[1]
    else:
        token = (
            ApiToken.objects.select_related("customer__user")
            .filter(key_hash=digest, revoked_at__isnull=True)
            .first()
        )
        if token is None:
            return None
        if token.customer_id is not None and not token.customer.user.is_active:
            return None
        with _recent_lock:
            if len(_recent) > 10_000:
                _recent.clear()
            _recent[digest] = (time.monotonic(), token)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def forget_cached_tokens() -> None:
    """Drop what this process remembers (after a revocation, a deactivated user, in tests)."""
    with _recent_lock:
        _recent.clear()


def revoke_token(*, token: ApiToken) -> ApiToken:
    forget_cached_tokens()
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
