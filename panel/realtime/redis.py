"""Redis clients of the realtime code: an asyncio one per event loop (consumers: console
streams, input, tickets, feeds) and one synchronous one per process (publishing events)."""

import asyncio
import threading
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# Enough for a burst of WebSocket connects; beyond it commands wait for a free connection
# instead of opening thousands (blocking reads use the stream hub's own connection).
MAX_CONNECTIONS = 64

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)
_sync_client: redis.Redis | None = None
_sync_lock = threading.Lock()


def get_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # Retried on a fresh connection once Redis is back: after a restart every pooled
        # connection is dead, and a command that died with one never reached the new server.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=MAX_CONNECTIONS, timeout=20, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[ConnectionError, TimeoutError],
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


def get_sync_redis() -> redis.Redis:
    global _sync_client
    with _sync_lock:
        if _sync_client is None:
            # Short timeouts: publishing runs after a state change committed and must not hang it.
            _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        return _sync_client
