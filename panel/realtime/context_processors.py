"""``events_seq`` for templates: where the signed-in user's event feed stood when the request
came in, before the view read anything from the database. static/js/live.js starts its socket
from there (``<html data-events-seq=...>``), so a state change between the view's read and the
socket's connection (a container is up within ~100 ms of its order) reaches the page too.

Read at the start of the request (``EventsSeqMiddleware``), not when the template renders: a
change between the view's read and the rendering would otherwise fall before the seq the page
starts from, and the page would never hear of it.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError, ResponseError

from panel.realtime.events import FeedBounds, feed_group
from panel.realtime.publish import feed_stream
from panel.realtime.redis import get_sync_redis

logger = logging.getLogger(__name__)

# Requests whose responses are never pages with a live socket.
NOT_PAGES = ("/api/", "/static/", "/metrics", "/admin/")


def current_seq(user) -> str | None:
    """The id of the newest event in the user's feed (or Redis's clock when it has none)."""
    client = get_sync_redis()
    try:
        try:
            return FeedBounds.of(client.xinfo_stream(feed_stream(feed_group(user)))).last
        except ResponseError:  # no feed yet: events will have ids after Redis's clock now
            seconds, micros = client.time()
            return f"{seconds * 1000 + micros // 1000}-0"
    except RedisError as exc:  # the page still works; its socket starts from "now"
        logger.warning("no events seq for the page: %s", exc)
        return None


class EventsSeqMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "GET" and not request.path.startswith(NOT_PAGES):
            user = getattr(request, "user", None)
            if user is not None and user.is_authenticated:
                request.events_seq = current_seq(user)
        return self.get_response(request)


def events_seq(request) -> dict[str, str]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    seq = request.events_seq if hasattr(request, "events_seq") else current_seq(user)
    return {"events_seq": seq} if seq else {}
