"""Rate limits per API token: a fixed window counter in the Django cache (Redis).

A counter is O(1) per request; DRF's SimpleRateThrottle keeps a list of every request's time
in the window, which grows with the rate the benchmark needs. The rate comes from
``settings.BERTH_API_RATE`` ("600/min"), read on each request so tests can change it.

Under ASGI every request runs in a thread of its own, and ``django.core.cache.cache`` is
per-thread: each request would open a new Redis connection. One cache object per process,
whose redis-py connection pool is thread-safe, keeps it to one round trip on a warm socket.
"""

from __future__ import annotations

import time
from functools import cache as once

from django.conf import settings
from django.core.cache import BaseCache, caches
from rest_framework.throttling import BaseThrottle

from panel.api.models import ApiToken

PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(rate: str) -> tuple[int, int]:
    """'600/min' → (600, 60)."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip().lower()]


@once
def shared_cache() -> BaseCache:
    return caches.create_connection("default")


# INCR, and EXPIRE on a window's first request: atomic, one round trip (a pipeline takes one
# too but costs twice the client time to build), and no counter is ever left without a TTL
COUNT_IN_WINDOW = """
local used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return used
"""


@once
def count_in_window():
    """The script, bound to the shared cache's client (redis-py sends EVALSHA, and the script
    itself again if Redis has lost it, e.g. after a restart)."""
    client = shared_cache()._cache.get_client(write=True)
    return client.register_script(COUNT_IN_WINDOW)


class TokenRateThrottle(BaseThrottle):
    def __init__(self):
        self.wait_seconds: float | None = None

    def allow_request(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        limit, period = parse_rate(settings.BERTH_API_RATE)
        now = time.time()
        window = int(now // period)
        key = f"api-rate:{token.key_hash[:16]}:{period}:{window}"
        used = count_in_window()(keys=[shared_cache().make_and_validate_key(key)], args=[period + 1])
        if used > limit:
            self.wait_seconds = period - (now % period)
            return False
        return True

    def wait(self) -> float | None:
        return self.wait_seconds
