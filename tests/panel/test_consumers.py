"""The WebSocket consumers against a real Redis and the test database: console scrollback,
live output, resume, gaps, read-only viewing and audit; the events feed with its sequence
numbers, replay and reload. The agent's side of a console is played by the test, writing
entries into the stream as ``workers/agent.py`` does."""

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from panel.audit.models import AuditEntry
from panel.instances.models import Instance, InstanceState
from panel.instances.states import transition
from panel.realtime.hub import get_hub, parse_id
from panel.realtime.publish import feed_stream, user_group
from panel.realtime.routing import websocket_urlpatterns
from panel.realtime.tickets import issue_ticket
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory, UserFactory
from workers import console_streams
from workers.console_streams import OutputEntry, ResumePoint

pytestmark = pytest.mark.django_db(transaction=True)


class AsUser:
    """Stands in for the session middleware: puts ``user`` in the scope."""

    def __init__(self, app, user):
        self.app, self.user = app, user

    async def __call__(self, scope, receive, send):
        return await self.app(dict(scope, user=self.user), receive, send)


class StalledClient:
    """A browser that stops reading: the server's sends of output wait until ``release()``,
    as they do when a real client's TCP window is full."""

    def __init__(self):
        self.app = None
        self.reading = asyncio.Event()
        self.reading.set()

    def wrap(self, app):
        self.app = app
        return self

    async def __call__(self, scope, receive, send):
        async def stalled_send(message):
            if message["type"] == "websocket.send" and message.get("bytes") is not None:
                await self.reading.wait()
            await send(message)

        return await self.app(scope, receive, stalled_send)


def communicator(path, user=None, headers=None, wrap=None):
    app = AsUser(URLRouter(websocket_urlpatterns), user or AnonymousUser())
    return WebsocketCommunicator(wrap(app) if wrap else app, path, headers=headers or [])


class Viewer:
    """A console client as static/js/console.js is: renders bytes, follows cursor messages,
    clears on reset, and can reconnect with ``?resume=``."""

    def __init__(self, ws: WebsocketCommunicator):
        self.ws = ws
        self.data = bytearray()
        self.controls: list[dict] = []
        self.gaps: list[tuple[int, int]] = []  # (bytes rendered before it, bytes skipped)
        self.resume: ResumePoint | None = None
        self.closed: dict | None = None

    async def connect(self) -> bool:
        return (await self.ws.connect())[0]

    def take(self, message: dict) -> None:
        if message["type"] == "websocket.close":
            self.closed = message
        elif message.get("bytes") is not None:
            self.data += message["bytes"]
            if self.resume is not None:
                self.resume = ResumePoint(self.resume.boot, self.resume.offset + len(message["bytes"]))
        else:
            control = json.loads(message["text"])
            self.controls.append(control)
            if control["type"] == "cursor":
                self.resume = ResumePoint.parse(control["resume"])
            elif control["type"] == "gap":
                self.gaps.append((len(self.data), control["skipped_bytes"]))
            elif control["type"] == "reset":
                self.data.clear()
                self.resume = None

    async def read_until(self, done, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                self.take(await self.ws.receive_output(timeout=timeout))

    def kinds(self) -> list[str]:
        return [c["type"] for c in self.controls]


@pytest.fixture
async def redis():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def running_instance(db):
    return Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="web", host=HostFactory(), state=InstanceState.RUNNING,
    )


@pytest.fixture
async def stream(running_instance, redis):
    """The instance's console stream, empty, and a writer that appends like the agent."""
    key = console_streams.output_stream(running_instance.host.name, running_instance.uuid.hex)
    await redis.delete(key)
    writer = ConsoleWriter(redis, key)
    yield writer
    await redis.delete(key)


class ConsoleWriter:
    def __init__(self, redis, key, boot="100.7"):
        self.redis, self.key, self.boot, self.offset = redis, key, boot, 0
        self.written = bytearray()

    async def write(self, data: bytes, *, maxlen: int | None = None) -> None:
        entry = OutputEntry(self.boot, self.offset, data)
        await self.redis.xadd(self.key, entry.fields(), maxlen=maxlen, approximate=False)
        self.offset += len(data)
        self.written += data

    async def write_lines(self, start: int, count: int, *, maxlen=None, pause=0.0) -> int:
        for n in range(start, start + count):
            await self.write(f"line {n}\r\n".encode(), maxlen=maxlen)
            if pause:
                await asyncio.sleep(pause)
        return start + count


async def user_of(instance):
    return await database_sync_to_async(lambda: instance.customer.user)()


def console_path(instance, query=""):
    return f"/ws/instances/{instance.pk}/console/" + (f"?{query}" if query else "")


# --- events --------------------------------------------------------------------------------

async def test_events_refuse_anonymous():
    ws = communicator("/ws/events/")
    connected, _ = await ws.connect()
    assert not connected


async def test_events_refuse_a_foreign_origin(running_instance):
    owner = await user_of(running_instance)
    ws = communicator("/ws/events/", owner, headers=[(b"origin", b"https://evil.example")])
    assert not (await ws.connect())[0]


async def test_events_reach_the_owner_and_staff_with_a_sequence_number_not_another_customer(running_instance):
    owner = await user_of(running_instance)
    stranger = await database_sync_to_async(lambda: CustomerFactory().user)()
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    mine, theirs, staff = (communicator("/ws/events/", u) for u in (owner, stranger, admin))
    for ws in (mine, theirs, staff):
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from(timeout=3))["type"] == "hello"
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    for ws in (mine, staff):
        event = await ws.receive_json_from(timeout=3)
        assert event["type"] == "instance.state"
        assert event["instance"]["id"] == running_instance.pk
        assert (event["instance"]["state"], event["previous_state"]) == ("stopped", "running")
        assert event["seq"]
    assert await theirs.receive_nothing(timeout=0.3)
    for ws in (mine, theirs, staff):
        await ws.disconnect()


async def test_events_missed_while_away_are_replayed_after_since(running_instance):
    owner = await user_of(running_instance)
    ws = communicator("/ws/events/", owner)
    assert (await ws.connect())[0]
    hello = await ws.receive_json_from(timeout=3)
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    first = await ws.receive_json_from(timeout=3)
    await ws.disconnect()
    assert parse_id(first["seq"]) > parse_id(hello["seq"])

    for state in (InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.RUNNING):
        await database_sync_to_async(transition)(running_instance.pk, state)
    again = communicator(f"/ws/events/?since={first['seq']}", owner)
    assert (await again.connect())[0]
    replayed = [await again.receive_json_from(timeout=3) for _ in range(3)]
    assert [e["instance"]["state"] for e in replayed] == ["running", "stopped", "running"]
    assert [e["instance"]["version"] for e in replayed] == [2, 3, 4]
    assert len({e["seq"] for e in replayed}) == 3
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    live = await again.receive_json_from(timeout=3)
    assert live["instance"]["version"] == 5  # then live, nothing twice
    assert await again.receive_nothing(timeout=0.2)
    await again.disconnect()


async def test_events_tell_a_client_to_reload_when_what_it_missed_is_gone(running_instance, redis):
    owner = await user_of(running_instance)
    ws = communicator("/ws/events/", owner)
    assert (await ws.connect())[0]
    await ws.receive_json_from(timeout=3)
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    seen = (await ws.receive_json_from(timeout=3))["seq"]
    await ws.disconnect()
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.RUNNING)
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    key = feed_stream(user_group(owner.pk))
    await redis.xtrim(key, maxlen=1, approximate=False)  # the feed rolled over while it was away

    states = iter([InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.RUNNING])
    for since in (seen, "99999999999999-0", "not-a-seq"):
        again = communicator(f"/ws/events/?since={since}", owner)
        assert (await again.connect())[0]
        assert (await again.receive_json_from(timeout=3))["type"] == "reload", since
        await database_sync_to_async(transition)(running_instance.pk, next(states))
        assert (await again.receive_json_from(timeout=3))["type"] == "instance.state"  # then live
        await again.disconnect()


async def test_host_status_goes_to_staff_only(running_instance):
    from panel.realtime.publish import publish_host

    owner = await user_of(running_instance)
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    customer_ws, staff_ws = communicator("/ws/events/", owner), communicator("/ws/events/", admin)
    for ws in (customer_ws, staff_ws):
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=3)
    host = await database_sync_to_async(lambda: running_instance.host)()
    await database_sync_to_async(publish_host)(host)
    event = await staff_ws.receive_json_from(timeout=3)
    assert event["type"] == "host.status" and event["host"]["name"] == host.name
    assert await customer_ws.receive_nothing(timeout=0.3)
    for ws in (customer_ws, staff_ws):
        await ws.disconnect()


async def test_many_subscribers_of_one_feed_share_one_reader(running_instance):
    owner = await user_of(running_instance)
    sockets = [communicator("/ws/events/", owner) for _ in range(20)]
    for ws in sockets:
        assert (await ws.connect())[0]
        await ws.receive_json_from(timeout=3)
    assert get_hub().stats()[feed_stream(user_group(owner.pk))][0] == 20
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    for ws in sockets:
        assert (await ws.receive_json_from(timeout=3))["instance"]["state"] == "stopped"
    for ws in sockets:
        await ws.disconnect()
    assert get_hub().stats() == {}


# --- consoles: access --------------------------------------------------------------------

async def test_console_refuses_another_customer_anonymous_and_a_bad_mode(running_instance):
    stranger = await database_sync_to_async(lambda: CustomerFactory().user)()
    owner = await user_of(running_instance)
    assert not (await communicator(console_path(running_instance), stranger).connect())[0]
    assert not (await communicator(console_path(running_instance)).connect())[0]
    assert not (await communicator(console_path(running_instance, "mode=admin"), owner).connect())[0]
    assert not await database_sync_to_async(AuditEntry.objects.filter(action="console.attach").exists)()


async def test_console_ticket_works_once(running_instance):
    ticket = await database_sync_to_async(issue_ticket)(instance_id=running_instance.pk, user_id=None)
    path = console_path(running_instance, f"ticket={ticket.token}")
    first = communicator(path)
    assert (await first.connect())[0]
    await first.disconnect()
    assert not (await communicator(path).connect())[0]
    other = await database_sync_to_async(issue_ticket)(instance_id=running_instance.pk + 1000, user_id=None)
    wrong = communicator(console_path(running_instance, f"ticket={other.token}"))
    assert not (await wrong.connect())[0]


async def test_every_attach_is_audited_with_who_and_how(running_instance):
    owner = await user_of(running_instance)
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    ticket = await database_sync_to_async(issue_ticket)(instance_id=running_instance.pk, user_id=owner.pk)
    for ws in (communicator(console_path(running_instance), owner),
               communicator(console_path(running_instance, "mode=ro"), admin),
               communicator(console_path(running_instance, f"ticket={ticket.token}"))):
        assert (await ws.connect())[0]
        await ws.disconnect()
    entries = await database_sync_to_async(lambda: list(
        AuditEntry.objects.filter(action="console.attach").order_by("id")
        .values("actor", "source", "target_id", "data")))()
    assert [(e["actor"], e["source"], e["data"]["via"], e["data"]["read_only"]) for e in entries] == [
        (owner.pk, "ui", "session", False),
        (admin.pk, "ui", "session", True),
        (owner.pk, "api", "ticket", False),
    ]
    assert {e["target_id"] for e in entries} == {str(running_instance.pk)}


async def test_read_only_viewers_watch_but_their_input_is_dropped(running_instance, stream, redis):
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    host_name = await database_sync_to_async(lambda: running_instance.host.name)()
    pubsub = redis.pubsub()
    await pubsub.subscribe(console_streams.input_channel(host_name))
    await pubsub.get_message(timeout=1)
    viewer = Viewer(communicator(console_path(running_instance, "mode=ro"), admin))
    assert await viewer.connect()
    await stream.write(b"$ ")
    await viewer.read_until(lambda v: v.data == b"$ ")
    await viewer.ws.send_to(bytes_data=b"reboot\r")
    await viewer.ws.send_to(text_data=json.dumps({"type": "resize", "cols": 100, "rows": 30}))
    await viewer.read_until(lambda v: v.kinds().count("error") == 2)
    assert "read-only" in viewer.controls[-1]["detail"]
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
    await viewer.ws.disconnect()
    await pubsub.aclose()


async def test_console_closes_for_the_owner_when_suspended_not_for_staff(running_instance):
    owner = await user_of(running_instance)
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    mine, staff = communicator(console_path(running_instance), owner), communicator(console_path(running_instance), admin)
    for ws in (mine, staff):
        assert (await ws.connect())[0]
        assert json.loads(await ws.receive_from(timeout=3)) == {"type": "state", "state": "running"}
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.SUSPENDED)
    for ws in (mine, staff):
        assert json.loads(await ws.receive_from(timeout=3)) == {"type": "state", "state": "suspended"}
    assert (await mine.receive_output(timeout=3))["type"] == "websocket.close"
    assert await staff.receive_nothing(timeout=0.3)
    assert not (await communicator(console_path(running_instance), owner).connect())[0]
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.TERMINATING)
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.TERMINATED)
    assert json.loads(await staff.receive_from(timeout=3))["state"] == "terminating"
    assert json.loads(await staff.receive_from(timeout=3))["state"] == "terminated"
    assert (await staff.receive_output(timeout=3))["type"] == "websocket.close"


# --- consoles: output --------------------------------------------------------------------

async def test_console_sends_scrollback_then_live_and_relays_input(running_instance, stream, redis):
    await stream.write(b"old line\r\n")
    owner = await user_of(running_instance)
    host_name = await database_sync_to_async(lambda: running_instance.host.name)()
    pubsub = redis.pubsub()
    await pubsub.subscribe(console_streams.input_channel(host_name))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    ws = communicator(console_path(running_instance), owner)
    assert (await ws.connect())[0]
    assert json.loads(await ws.receive_from(timeout=3)) == {"type": "state", "state": "running"}
    assert json.loads(await ws.receive_from(timeout=3)) == {"type": "cursor", "resume": "100.7:0"}
    assert await ws.receive_from(timeout=3) == b"old line\r\n"
    # A character split across two entries, and an escape sequence split too, arrive intact.
    await stream.write("é".encode()[:1])
    await stream.write("é".encode()[1:] + b"\x1b[1")
    await stream.write(b";31mred\x1b[0m\r\n")
    received = b""
    while len(received) < len("é\x1b[1;31mred\x1b[0m\r\n".encode()):
        received += await ws.receive_from(timeout=3)
    assert received == "é\x1b[1;31mred\x1b[0m\r\n".encode()

    uuid = running_instance.uuid.hex
    await ws.send_to(bytes_data=b"hostname\r")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
    assert console_streams.decode(message["data"]) == console_streams.ConsoleInput("i", uuid, data=b"hostname\r")
    await ws.send_to(text_data=json.dumps({"type": "resize", "cols": 120, "rows": 40}))
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
    assert console_streams.decode(message["data"]) == console_streams.ConsoleInput("r", uuid, rows=40, cols=120)
    for bad in ("not json", json.dumps({"type": "resize", "cols": 0, "rows": 5}),
                '{"type": "resize", "rows": Infinity, "cols": 80}', "[" * 100_000 + "]" * 100_000,
                '{"type": "resize", "rows": true, "cols": 80}', '{"type": "resize", "rows": 24.5, "cols": 80}'):
        await ws.send_to(text_data=bad)
        assert json.loads(await ws.receive_from(timeout=3))["type"] == "error"
    await ws.send_to(text_data=json.dumps({"type": "resize", "cols": 100, "rows": 30}))  # still up
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
    assert console_streams.decode(message["data"]) == console_streams.ConsoleInput("r", uuid, rows=30, cols=100)
    await ws.disconnect()
    await pubsub.aclose()


async def test_two_viewers_see_the_same_stream_and_both_type(running_instance, stream, redis):
    owner = await user_of(running_instance)
    admin = await database_sync_to_async(lambda: UserFactory(is_staff=True))()
    host_name = await database_sync_to_async(lambda: running_instance.host.name)()
    pubsub = redis.pubsub()
    await pubsub.subscribe(console_streams.input_channel(host_name))
    await pubsub.get_message(timeout=1)
    a, b = Viewer(communicator(console_path(running_instance), owner)), Viewer(communicator(console_path(running_instance), admin))
    assert await a.connect() and await b.connect()
    for n, viewer in enumerate((a, b, a, b)):
        await viewer.ws.send_to(bytes_data=f"typed {n}\r".encode())
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
        assert console_streams.decode(message["data"]).data == f"typed {n}\r".encode()
        await stream.write(f"echo {n}\r\n".encode())  # what the console answers, to everyone
    expected = b"".join(f"echo {n}\r\n".encode() for n in range(4))
    for viewer in (a, b):
        await viewer.read_until(lambda v: len(v.data) >= len(expected))
        assert bytes(viewer.data) == expected
        assert "error" not in viewer.kinds()
    await a.ws.disconnect()
    await b.ws.disconnect()
    await pubsub.aclose()


async def test_viewers_joining_while_output_flows_get_scrollback_then_live_without_gap_or_duplicate(
        running_instance, stream):
    """A writer appends numbered lines (the stream trimmed as the agent does) while viewers
    join one after another: each gets a contiguous tail of the output, to the very end."""
    owner = await user_of(running_instance)
    viewers, readers = [], []
    line = 0
    for _ in range(6):
        line = await stream.write_lines(line, 150, maxlen=200, pause=0.0005)
        viewer = Viewer(communicator(console_path(running_instance), owner))
        assert await viewer.connect()
        viewers.append(viewer)
        readers.append(asyncio.create_task(viewer.read_until(lambda v: v.data.endswith(b"END\r\n"), 30)))
    await stream.write_lines(line, 300, maxlen=200, pause=0.0005)
    await stream.write(b"END\r\n", maxlen=200)
    await asyncio.gather(*readers)
    for viewer in viewers:
        assert stream.written.endswith(viewer.data), "not a contiguous tail of the output"
        assert viewer.data.startswith(b"line ")  # whole entries: the scrollback starts at one
        assert viewer.kinds() == ["state", "cursor"]  # no gap, no reset
        assert viewer.resume == ResumePoint(stream.boot, stream.offset)
        await viewer.ws.disconnect()
    assert len(viewers[-1].data) < len(viewers[0].data)  # a later viewer got a later tail


async def test_a_reconnecting_viewer_resumes_exactly_where_it_stopped(running_instance, stream):
    owner = await user_of(running_instance)
    await stream.write_lines(0, 20)
    first = Viewer(communicator(console_path(running_instance), owner))
    assert await first.connect()
    await first.read_until(lambda v: v.data.endswith(b"line 19\r\n"))
    await first.ws.disconnect()
    await stream.write_lines(20, 5)

    again = Viewer(communicator(console_path(running_instance, f"resume={first.resume}"), owner))
    again.resume = first.resume
    assert await again.connect()
    await again.read_until(lambda v: v.data.endswith(b"line 24\r\n"))
    assert bytes(first.data + again.data) == bytes(stream.written)
    assert "reset" not in again.kinds()
    await stream.write(b"live\r\n")
    await again.read_until(lambda v: v.data.endswith(b"live\r\n"))
    assert bytes(first.data + again.data) == bytes(stream.written)
    await again.ws.disconnect()


async def test_a_resume_point_that_was_trimmed_gets_reset_and_the_whole_scrollback(running_instance, stream):
    owner = await user_of(running_instance)
    await stream.write_lines(0, 10)
    gone = ResumePoint(stream.boot, 5)
    await stream.write_lines(10, 10, maxlen=5)
    for resume in (str(gone), "other-boot:10", "garbage"):
        viewer = Viewer(communicator(console_path(running_instance, f"resume={resume}"), owner))
        viewer.data += b"stale screen"
        assert await viewer.connect()
        await viewer.read_until(lambda v: v.data.endswith(b"line 19\r\n"))
        assert "reset" in viewer.kinds()
        assert bytes(viewer.data) == b"".join(f"line {n}\r\n".encode() for n in range(15, 20))
        await viewer.ws.disconnect()


async def test_output_relayed_twice_after_redis_lost_the_stream_is_not_shown_twice(running_instance, stream, redis):
    owner = await user_of(running_instance)
    await stream.write_lines(0, 10)
    viewer = Viewer(communicator(console_path(running_instance), owner))
    assert await viewer.connect()
    await viewer.read_until(lambda v: v.data.endswith(b"line 9\r\n"))
    # Redis restarted empty: the agent re-relays what the console still holds, from offset 0.
    await redis.delete(stream.key)
    replay = ConsoleWriter(redis, stream.key, boot=stream.boot)
    await replay.write_lines(0, 12)
    await viewer.read_until(lambda v: v.data.endswith(b"line 11\r\n"))
    assert bytes(viewer.data) == b"".join(f"line {n}\r\n".encode() for n in range(12))
    # A browser that reconnects meanwhile to the empty stream does not get duplicates either.
    await redis.delete(stream.key)
    late = Viewer(communicator(console_path(running_instance, f"resume={viewer.resume}"), owner))
    assert await late.connect()
    await ConsoleWriter(redis, stream.key, boot=stream.boot).write_lines(0, 13)
    await late.read_until(lambda v: v.data.endswith(b"line 12\r\n"))
    assert bytes(late.data) == b"line 12\r\n" and "reset" not in late.kinds()
    await viewer.ws.disconnect()
    await late.ws.disconnect()


async def test_a_slow_viewer_is_told_what_it_missed_and_does_not_hold_up_the_others(running_instance, stream):
    owner = await user_of(running_instance)
    stalled = StalledClient()
    slow = Viewer(communicator(console_path(running_instance), owner, wrap=stalled.wrap))
    fast = Viewer(communicator(console_path(running_instance), owner))
    assert await slow.connect() and await fast.connect()
    await stream.write(b"first\r\n")
    await fast.read_until(lambda v: v.data == b"first\r\n")
    stalled.reading.clear()  # the slow one stops reading
    # A flood, trimmed to a scrollback of 64 entries of 4 KiB, far more than a viewer's queue.
    chunk = b"y\r\n" * 1365 + b"\r\n"
    for _ in range(200):
        await stream.write(chunk, maxlen=64)
    await stream.write(b"end\r\n", maxlen=64)
    await fast.read_until(lambda v: v.data.endswith(b"end\r\n"), timeout=20)
    assert bytes(fast.data) == bytes(stream.written)  # the fast one got every byte, no gap
    followers, queued = get_hub().stats()[stream.key]
    assert followers == 1  # the slow one was dropped from the live fan-out...
    assert queued <= 256 * 1024  # ...and nothing queues without bound
    stalled.reading.set()
    await slow.read_until(lambda v: v.data.endswith(b"end\r\n"), timeout=20)
    [(at, skipped)] = slow.gaps
    assert skipped > 100_000
    assert stream.written.startswith(slow.data[:at])  # what it got before the gap...
    assert stream.written.endswith(slow.data[at:])  # ...and after it, to the end
    assert len(slow.data) + skipped == len(stream.written)
    assert slow.resume == ResumePoint(stream.boot, stream.offset)
    await slow.ws.disconnect()
    await fast.ws.disconnect()


async def test_the_hub_reconnects_when_its_redis_connection_drops(running_instance, stream, redis):
    owner = await user_of(running_instance)
    viewer = Viewer(communicator(console_path(running_instance), owner))
    assert await viewer.connect()
    await stream.write(b"before\r\n")
    await viewer.read_until(lambda v: v.data == b"before\r\n")
    async with asyncio.timeout(5):  # the hub connects in the background
        while not (hub := [c["id"] for c in await redis.client_list()
                           if c.get("name") == get_hub().client_name and c.get("cmd") == "xread"]):
            await asyncio.sleep(0.01)
    await redis.client_kill_filter(_id=hub[0])
    await stream.write(b"after\r\n")
    await viewer.read_until(lambda v: v.data == b"before\r\nafter\r\n", timeout=10)
    assert viewer.kinds() == ["state", "cursor"]
    await viewer.ws.disconnect()
