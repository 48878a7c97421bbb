"""One Redis reader per web process for every stream its WebSockets follow.

A console or an event feed watched by a thousand browsers is read from Redis once per process,
not once per browser: ``StreamHub`` keeps one blocking XREAD over all the streams followed in
this process, on a connection of its own, and hands each new entry to every local
``Subscription``. A subscriber that cannot keep up (its queue would exceed its byte budget) is
dropped by the hub and catches up from Redis by itself (``follow``), so a slow browser never
holds memory for the others or slows them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import weakref
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from panel.realtime.redis import get_redis

logger = logging.getLogger(__name__)

Entry = tuple[str, dict[bytes, bytes]]  # (stream id, fields)

BLOCK_MS = 5000  # the hub's XREAD wakes up this often even when nothing happens
READ_COUNT = 256  # entries per stream per XREAD
RETRY_MAX_SECONDS = 2.0


def parse_id(value: str) -> tuple[int, int]:
    """A stream id ("<ms>-<seq>") as a comparable tuple; ValueError when it is not one."""
    ms, sep, seq = value.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()) or len(value) > 41:
        raise ValueError(f"not a stream id: {value!r}")
    return int(ms), int(seq or 0)


def entry_size(fields: dict[bytes, bytes]) -> int:
    return sum(len(value) for value in fields.values())


class Lagged(Exception):
    """The subscriber fell further behind than its byte budget and was dropped by the hub."""


class Subscription:
    """Entries of one stream after ``start``, queued for one local subscriber."""

    def __init__(self, hub: StreamHub, key: str, start: str, max_bytes: int) -> None:
        self.key = key
        self.start = start
        self._hub = hub
        self._max_bytes = max_bytes
        self._entries: list[Entry] = []
        self._size = 0
        self._lagged = False
        self._ready = asyncio.Event()

    @property
    def queued(self) -> int:
        return self._size

    def offer(self, entries: list[Entry], size: int) -> bool:
        """Queue entries; False (and the subscription is over) when that exceeds the budget.
        One batch is always taken by an empty queue, so a subscriber can always progress."""
        if self._lagged:
            return False
        if self._size and self._size + size > self._max_bytes:
            self._entries, self._size, self._lagged = [], 0, True
            self._ready.set()
            return False
        self._entries.extend(entries)
        self._size += size
        self._ready.set()
        return True

    async def get(self) -> list[Entry]:
        """Everything queued so far (waits for at least one entry); raises Lagged."""
        while not self._entries:
            if self._lagged:
                raise Lagged
            self._ready.clear()
            await self._ready.wait()
        entries, self._entries, self._size = self._entries, [], 0
        return entries

    def close(self) -> None:
        self._hub.unsubscribe(self)


class StreamHub:
    """The process's reader of followed streams (one per event loop: see ``get_hub``)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._subs: dict[str, set[Subscription]] = {}
        self._last: dict[str, str] = {}  # per stream: id of the newest entry handed out
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        # XREAD also waits on this stream, so adding a stream to the XREAD in progress is one
        # XADD away (no reconnect, no race: an entry added before the XREAD starts counts too).
        name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake_key = f"berth:hub-wake:{name}"
        self._wake_id = "0-0"
        self.client_name = f"berth-hub-{os.getpid()}-{id(self):x}"  # in CLIENT LIST

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per followed stream: local subscribers, and the bytes queued for them."""
        return {key: (len(subs), sum(sub.queued for sub in subs)) for key, subs in self._subs.items()}

    def subscribe(self, key: str, after: str, *, max_bytes: int) -> Subscription:
        """Start queueing entries of ``key``. The subscription's ``start`` is where the hub
        stands: entries after it are queued; those between ``after`` and it (if any) the
        caller reads from Redis itself (``follow`` does)."""
        subs = self._subs.get(key)
        new_stream = subs is None
        if new_stream:
            subs = self._subs[key] = set()
            self._last[key] = after
        sub = Subscription(self, key, self._last[key], max_bytes)
        subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stream-hub")
        elif new_stream:
            self._spawn(self._wake())
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            del self._last[sub.key]
        if not self._subs and self._task is not None:
            self._task.cancel()  # nobody follows anything in this process: stop reading
            self._task = None

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wake(self) -> None:
        try:
            async with get_redis().pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, 3600)
                await pipe.execute()
        except RedisError as exc:  # the XREAD wakes up by itself within BLOCK_MS
            logger.warning("could not wake the stream hub: %s", exc)

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url, single_connection_client=True, client_name=self.client_name, socket_connect_timeout=5,
            socket_timeout=BLOCK_MS / 1000 + 10, socket_keepalive=True,
        )

    async def _run(self) -> None:
        client = self._client()
        delay = 0.1
        try:
            while self._subs:
                streams = dict(self._last)
                streams[self._wake_key] = self._wake_id
                try:
                    response = await client.xread(streams, count=READ_COUNT, block=BLOCK_MS)
                except RedisError as exc:
                    # Redis restarted or unreachable: keep every subscriber, reconnect.
                    logger.warning("stream hub lost Redis (%s); retrying in %.1f s", exc, delay)
                    with contextlib.suppress(Exception):
                        await client.aclose()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    client = self._client()
                    continue
                delay = 0.1
                for key, entries in response or ():
                    key = key.decode()
                    if self._last.get(key, streams.get(key)) != streams.get(key):
                        # Nobody followed it for a moment and it is followed again, from
                        # another point: this answer was read from the old one (it could skip
                        # entries the new follower needs). The next XREAD reads from the new.
                        continue
                    self._deliver(key, [(i.decode(), f) for i, f in entries])
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _deliver(self, key: str, entries: list[Entry]) -> None:
        if not entries:
            return
        newest = entries[-1][0]
        if key == self._wake_key:
            self._wake_id = newest
            return
        subs = self._subs.get(key)
        if subs is None:
            return  # nobody follows it any more
        if parse_id(newest) > parse_id(self._last[key]):
            self._last[key] = newest
        size = sum(entry_size(fields) for _, fields in entries)
        for sub in list(subs):
            if not sub.offer(entries, size):
                self.unsubscribe(sub)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def get_hub() -> StreamHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = StreamHub(settings.REDIS_URL)
    return hub


async def read_range(key: str, after: str, until: str = "+", *, count: int) -> list[Entry]:
    """Up to ``count`` entries of ``key`` after ``after`` (exclusive) up to ``until``; waits
    out a Redis outage instead of failing."""
    delay = 0.1
    while True:
        try:
            raw = await get_redis().xrange(key, min=f"({after}", max=until, count=count)
            return [(entry_id.decode(), fields) for entry_id, fields in raw]
        except RedisError as exc:
            logger.warning("reading %s failed (%s); retrying in %.1f s", key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


class CaughtUp:
    """Yielded by ``follow`` when it had fallen behind and re-read from Redis: entries
    trimmed from the stream meanwhile are lost (the caller may say so)."""


async def follow(key: str, after: str, *, max_bytes: int, count: int = 64
                 ) -> AsyncIterator[list[Entry] | CaughtUp]:
    """Every entry of ``key`` after ``after``, in order, each once, in batches: live from the
    process's hub; from Redis while catching up (at the start, and after falling behind)."""
    hub = get_hub()
    position = after
    lagged = False
    while True:
        sub = hub.subscribe(key, position, max_bytes=max_bytes)
        try:
            if lagged:
                yield CaughtUp()
            while parse_id(sub.start) > parse_id(position):
                entries = await read_range(key, position, sub.start, count=count)
                if not entries:
                    break  # trimmed meanwhile; the hub's queue holds what comes next
                position = entries[-1][0]
                yield entries
            while True:
                floor = parse_id(position)
                entries = [e for e in await sub.get() if parse_id(e[0]) > floor]
                if entries:
                    position = entries[-1][0]
                    yield entries
        except Lagged:
            lagged = True
        finally:
            sub.close()
