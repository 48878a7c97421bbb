"""What one ``/ws/events/`` connection receives: its feed (``panel/realtime/publish.py``), each
event carrying its sequence number ``seq``, with replay for browsers that reconnect.

- ``{"type": "hello", "seq": S}`` first, for a connection without ``?since=``: events after S
  follow.
- With ``?since=S`` (the last ``seq`` the browser saw) the events it missed come first, then
  the live ones; when some of them are no longer kept, ``{"type": "reload", "seq": S2}`` says
  the page must be reloaded (events after S2 follow).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from panel.realtime.hub import RETRY_MAX_SECONDS, CaughtUp, follow, parse_id
from panel.realtime.publish import STAFF_GROUP, feed_stream, instance_group, user_group
from panel.realtime.redis import get_redis

logger = logging.getLogger(__name__)

FEED_QUEUE_BYTES = 128 * 1024  # per connection, in the web process (some hundreds of events)


def feed_group(user) -> str:
    """Staff follow every instance and host; a customer, their own instances."""
    return STAFF_GROUP if user.is_staff else user_group(user.pk)


@dataclass(frozen=True)
class FeedBounds:
    first: str  # oldest id kept
    last: str  # newest id ever added
    trimmed: bool  # whether any entry was ever dropped

    @classmethod
    def of(cls, info: dict) -> FeedBounds:
        """From XINFO STREAM's answer."""
        last = info["last-generated-id"].decode()
        first = info["first-entry"][0].decode() if info.get("first-entry") else last
        return cls(first, last, trimmed=info["entries-added"] > info["length"])


async def _bounds(key: str) -> FeedBounds | None:
    """The feed's bounds; None when it does not exist (yet, or any more)."""
    delay = 0.1
    while True:
        try:
            return FeedBounds.of(await get_redis().xinfo_stream(key))
        except ResponseError:
            return None  # no such key
        except RedisError as exc:
            logger.warning("reading feed %s failed (%s); retrying in %.1f s", key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


def replayable(since: str, bounds: FeedBounds | None) -> bool:
    """Whether every event after ``since`` is still in the feed.

    A feed that does not exist has had no events since (it would exist: it only expires
    after a week without any). An id newer than the newest ever added comes from before
    Redis lost the feed. An id older than the oldest kept is fine while nothing was ever
    trimmed (the feed began after it); otherwise events right after it may be gone.
    """
    try:
        position = parse_id(since)
    except ValueError:
        return False
    if bounds is None:
        return True
    if position > parse_id(bounds.last):
        return False
    return position >= parse_id(bounds.first) or not bounds.trimmed


def _control(kind: str, seq: str) -> str:
    return json.dumps({"type": kind, "seq": seq})


async def event_messages(group: str, since: str | None) -> AsyncIterator[str]:
    """The text frames for one connection following ``group``'s feed."""
    key = feed_stream(group)
    bounds = await _bounds(key)
    tail = bounds.last if bounds else "0-0"
    if since is None:
        position = tail
        yield _control("hello", tail)
    elif replayable(since, bounds):
        position = since
    else:
        position = tail
        yield _control("reload", tail)
    async for batch in follow(key, position, max_bytes=FEED_QUEUE_BYTES, count=256):
        if isinstance(batch, CaughtUp):
            bounds = await _bounds(key)
            if not replayable(position, bounds):
                yield _control("reload", bounds.last if bounds else position)
            continue
        for entry_id, fields in batch:
            body = fields.get(b"e", b"")
            if body[:1] == b"{" and len(body) > 2:
                # The stored JSON with the sequence number put first: built once per event and
                # connection without parsing it.
                yield f'{{"seq":"{entry_id}",{body[1:].decode()}'
        position = batch[-1][0]


async def feed_tail(group: str) -> str:
    """The newest id of ``group``'s feed: follow from it to get what comes next."""
    bounds = await _bounds(feed_stream(group))
    return bounds.last if bounds else "0-0"


async def instance_states(instance_id: int, after: str) -> AsyncIterator[tuple[int, str]]:
    """(version, state) of each state change of the instance after ``after`` in its feed."""
    async for batch in follow(feed_stream(instance_group(instance_id)), after, max_bytes=FEED_QUEUE_BYTES):
        if isinstance(batch, CaughtUp):
            continue
        for _entry_id, fields in batch:
            try:
                event = json.loads(fields.get(b"e", b""))
                yield int(event["instance"]["version"]), str(event["instance"]["state"])
            except (ValueError, KeyError, TypeError):
                continue
