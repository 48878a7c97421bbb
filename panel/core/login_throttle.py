"""Login throttle: failed sign-ins are counted in the shared cache per client address and
username, and per address; past a limit, signing in from there is refused for a while.

The refusal reads the same whether the username exists or not, and failures for unknown
usernames count too, so the throttle tells nobody which accounts exist. A successful sign-in
clears the count for that address and username. Counting hangs on Django's own login signals,
so every form that authenticates (the panel's login, the admin's) is covered.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest

logger = logging.getLogger(__name__)

PREFIX = "berth:login-fail:"


@dataclass(frozen=True)
class Limits:
    per_user: int
    per_address: int
    seconds: int


def limits() -> Limits:
    return Limits(settings.BERTH_LOGIN_ATTEMPTS, settings.BERTH_LOGIN_ATTEMPTS_PER_ADDRESS,
                  settings.BERTH_LOGIN_LOCKOUT_SECONDS)


def client_address(request: HttpRequest) -> str:
    """The client's address; through a trusted reverse proxy (BERTH_TRUSTED_PROXIES), the last
    address in X-Forwarded-For that is not a trusted proxy (earlier ones the client wrote)."""
    remote = request.META.get("REMOTE_ADDR", "")
    trusted = settings.BERTH_TRUSTED_PROXIES
    if remote not in trusted:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for address in reversed(forwarded):
        if address and address not in trusted:
            return address
    return remote


def _keys(address: str, username: str) -> tuple[str, str]:
    # Hashed: usernames and addresses are not kept in the cache in the clear.
    pair = hashlib.sha256(f"{address}\0{username.casefold()}".encode()).hexdigest()[:32]
    alone = hashlib.sha256(address.encode()).hexdigest()[:32]
    return f"{PREFIX}pair:{pair}", f"{PREFIX}addr:{alone}"


def refused_for(request: HttpRequest, username: str) -> int:
    """Seconds left before this address may try this username again; 0 when it may now."""
    pair_key, address_key = _keys(client_address(request), username)
    counts = cache.get_many([pair_key, address_key])
    lim = limits()
    if counts.get(pair_key, 0) >= lim.per_user or counts.get(address_key, 0) >= lim.per_address:
        return lim.seconds
    return 0


def _count(key: str, seconds: int) -> int:
    cache.add(key, 0, timeout=seconds)  # the window starts at the first failure
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, timeout=seconds)
        return 1


@receiver(user_login_failed)
def _record_failure(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    if request is None:
        return
    address = client_address(request)
    pair_key, address_key = _keys(address, str(credentials.get("username", "")))
    lim = limits()
    pair = _count(pair_key, lim.seconds)
    total = _count(address_key, lim.seconds)
    if pair == lim.per_user or total == lim.per_address:
        logger.warning("sign-in throttled for %s after %d failures", address, max(pair, total))


@receiver(user_logged_in)
def _clear_failures(sender, request: HttpRequest | None = None, user=None, **kwargs) -> None:
    if request is None or user is None:
        return
    pair_key, _ = _keys(client_address(request), user.get_username())
    cache.delete(pair_key)
