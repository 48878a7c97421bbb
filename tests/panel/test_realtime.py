"""The realtime building blocks on their own: turning console stream entries into a viewer's
frames (no duplicate, no silent gap), where a reconnecting viewer resumes, when an events
feed can replay what a browser missed, and the feed position a page is rendered with."""

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import RequestFactory

from panel.instances.models import Instance, InstanceState
from panel.instances.states import transition
from panel.realtime.consoles import OutputCursor, cursor_message, resume_index
from panel.realtime.context_processors import EventsSeqMiddleware, events_seq
from panel.realtime.events import FeedBounds, replayable
from panel.realtime.hub import parse_id
from panel.realtime.publish import feed_stream, user_group
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory
from tests.panel.test_consumers import communicator
from workers.console_streams import OutputEntry, ResumePoint


def e(boot: str, offset: int, data: bytes) -> OutputEntry:
    return OutputEntry(boot, offset, data)


def test_a_cursor_passes_output_through_once_and_names_where_it_starts():
    cursor = OutputCursor()
    assert cursor.feed([e("b1", 0, b"abc"), e("b1", 3, b"def")]) == [cursor_message("b1", 0), b"abcdef"]
    assert cursor.feed([e("b1", 3, b"def"), e("b1", 4, b"efgh")]) == [b"gh"]  # relayed twice
    assert cursor.feed([e("b1", 20, b"xyz")]) == [
        {"type": "gap", "skipped_bytes": 12}, cursor_message("b1", 20), b"xyz"]
    assert cursor.feed([e("b2", 0, b"new boot")]) == [cursor_message("b2", 0), b"new boot"]
    assert cursor.feed([e("b2", 8, b"")]) == []


def test_a_cursor_resumes_inside_an_entry():
    cursor = OutputCursor(ResumePoint("b1", 5))
    assert cursor.feed([e("b1", 0, b"0123456789")]) == [b"56789"]


@pytest.mark.parametrize(("resume", "expected"), [
    (ResumePoint("b1", 0), None),  # its next byte was trimmed
    (ResumePoint("b1", 4), 1),  # inside the second entry
    (ResumePoint("b1", 6), 2),  # all of b1 seen: b2 starts next
    (ResumePoint("b1", 99), 2),  # ahead of the stream (it was lost and is being rebuilt)
    (ResumePoint("b0", 3), None),  # its boot is gone from the scrollback
    (ResumePoint("b2", 0), 2),
])
def test_where_a_viewer_resumes(resume, expected):
    entries = [e("b1", 1, b"ab"), e("b1", 3, b"cde"), e("b2", 0, b"xy")]
    assert resume_index(entries, resume) == expected


def test_a_viewer_resumes_in_an_empty_stream_and_garbage_is_refused():
    assert resume_index([], ResumePoint("b1", 10)) == 0
    for bad in ("", "nocolon", "b:", "b:-1", "b:1x", ":5"):
        with pytest.raises(ValueError):
            ResumePoint.parse(bad)
    assert ResumePoint.parse("123.456:789") == ResumePoint("123.456", 789)
    assert ResumePoint.parse("a:b:7") == ResumePoint("a:b", 7)


@pytest.mark.parametrize(("since", "bounds", "ok"), [
    ("5-0", FeedBounds("3-0", "9-0", trimmed=True), True),
    ("3-0", FeedBounds("3-0", "9-0", trimmed=True), True),
    ("2-5", FeedBounds("3-0", "9-0", trimmed=True), False),  # what came after it may be gone
    ("2-5", FeedBounds("3-0", "9-0", trimmed=False), True),  # the feed began after it
    ("10-0", FeedBounds("3-0", "9-0", trimmed=False), False),  # from before Redis lost the feed
    ("10-0", None, True),  # no feed: nothing happened
    ("nonsense", FeedBounds("3-0", "9-0", trimmed=False), False),
])
def test_when_a_feed_can_replay_what_a_browser_missed(since, bounds, ok):
    assert replayable(since, bounds) is ok


@pytest.mark.django_db(transaction=True)
async def test_a_page_renders_with_its_feed_position_and_its_socket_misses_nothing_after_it():
    instance = await database_sync_to_async(lambda: Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="web", host=HostFactory(), state=InstanceState.RUNNING))()
    owner = await database_sync_to_async(lambda: instance.customer.user)()
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(feed_stream(user_group(owner.pk)))
    client.close()
    request = RequestFactory().get("/")
    request.user = owner
    for version, state in ((1, InstanceState.STOPPED), (2, InstanceState.RUNNING)):  # without a feed, with one
        seq = (await database_sync_to_async(events_seq)(request))["events_seq"]
        await database_sync_to_async(transition)(instance.pk, state)
        ws = communicator(f"/ws/events/?since={seq}", owner)  # the page's socket, a moment later
        assert (await ws.connect())[0]
        event = await ws.receive_json_from(timeout=3)
        assert event["type"] == "instance.state" and event["instance"]["version"] == version
        await ws.disconnect()
    request.user = type("Anonymous", (), {"is_authenticated": False})()
    assert events_seq(request) == {}


@pytest.mark.django_db
def test_the_feed_position_is_read_before_the_view_so_a_change_during_the_view_is_not_lost(
        django_capture_on_commit_callbacks):
    """A state change after the view read the instance but before the template rendered must
    come after the page's seq (the middleware reads it first), or the page never hears of it."""
    instance = Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="web", host=HostFactory(), state=InstanceState.PENDING)
    owner = instance.customer.user
    request = RequestFactory().get(f"/instances/{instance.pk}/")
    request.user = owner
    rendered = {}

    def view(request):  # reads "pending", then the host reports while the page renders
        with django_capture_on_commit_callbacks(execute=True):  # the event is published
            transition(instance.pk, InstanceState.PROVISIONING)
        rendered.update(events_seq(request))
        return None

    EventsSeqMiddleware(view)(request)
    client = redis.Redis.from_url(settings.REDIS_URL)
    newest = client.xrevrange(feed_stream(user_group(owner.pk)), count=1)[0][0].decode()
    client.close()
    assert parse_id(rendered["events_seq"]) < parse_id(newest)  # the change is replayed to it


@pytest.mark.django_db
def test_every_page_tells_its_socket_where_to_start(client):
    """static/js/live.js starts its socket from <html data-events-seq>: without it, what
    happens between the page's rendering and the socket's connection is never shown."""
    customer = CustomerFactory()
    client.force_login(customer.user)
    html = client.get("/").content.decode()
    seq = html.split('data-events-seq="', 1)[1].split('"', 1)[0]
    parse_id(seq)  # a stream id


def test_panels_that_share_a_redis_database_keep_their_feeds_apart(monkeypatch):
    """Feeds are named after database ids; two panels (test runs side by side) on one Redis
    database number their users and instances alike, and must not read each other's."""
    from django.db import connections

    ours = feed_stream(user_group(7))
    assert ours == feed_stream(user_group(7))  # stable
    monkeypatch.setitem(connections["default"].settings_dict, "NAME", "another_panel")
    theirs = feed_stream(user_group(7))
    assert theirs != ours and theirs.endswith(":user.7") and ours.endswith(":user.7")
