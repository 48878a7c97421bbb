"""The WebSocket consumers against a real Redis (database 1) and the test database."""

import json

import pytest
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from panel.instances.models import Instance, InstanceState
from panel.instances.states import transition
from panel.realtime.routing import websocket_urlpatterns
from panel.realtime.tickets import issue_ticket
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory
from workers import console_streams

pytestmark = pytest.mark.django_db(transaction=True)


class AsUser:
    """Stands in for the session middleware: puts ``user`` in the scope."""

    def __init__(self, app, user):
        self.app, self.user = app, user

    async def __call__(self, scope, receive, send):
        return await self.app(dict(scope, user=self.user), receive, send)


def communicator(path, user=None, headers=None):
    app = AsUser(URLRouter(websocket_urlpatterns), user or AnonymousUser())
    return WebsocketCommunicator(app, path, headers=headers or [])


@pytest.fixture
async def redis():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def running_instance(db):
    instance = Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="web", host=HostFactory(), state=InstanceState.RUNNING,
    )
    return instance


async def test_events_refuse_anonymous():
    ws = communicator("/ws/events/")
    connected, _ = await ws.connect()
    assert not connected


async def test_events_reach_the_owner_and_not_another_customer(running_instance):
    owner = await database_sync_to_async(lambda: running_instance.customer.user)()
    stranger = await database_sync_to_async(lambda: CustomerFactory().user)()
    mine, theirs = communicator("/ws/events/", owner), communicator("/ws/events/", stranger)
    assert (await mine.connect())[0] and (await theirs.connect())[0]
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.STOPPED)
    event = await mine.receive_json_from(timeout=3)
    assert event["type"] == "instance.state"
    assert event["instance"]["id"] == running_instance.pk
    assert (event["instance"]["state"], event["previous_state"]) == ("stopped", "running")
    assert await theirs.receive_nothing(timeout=0.3)
    await mine.disconnect()
    await theirs.disconnect()


async def test_events_refuse_a_foreign_origin(running_instance):
    owner = await database_sync_to_async(lambda: running_instance.customer.user)()
    ws = communicator("/ws/events/", owner, headers=[(b"origin", b"https://evil.example")])
    assert not (await ws.connect())[0]


async def test_console_refuses_another_customer_and_anonymous(running_instance):
    stranger = await database_sync_to_async(lambda: CustomerFactory().user)()
    path = f"/ws/instances/{running_instance.pk}/console/"
    assert not (await communicator(path, stranger).connect())[0]
    assert not (await communicator(path).connect())[0]


async def test_console_sends_scrollback_then_live_and_relays_input(running_instance, redis):
    uuid = running_instance.uuid.hex
    key = console_streams.output_stream(uuid)
    await redis.delete(key)
    await redis.xadd(key, {"d": b"old line\r\n", "o": 0, "b": "1"})
    owner = await database_sync_to_async(lambda: running_instance.customer.user)()
    host_name = await database_sync_to_async(lambda: running_instance.host.name)()
    pubsub = redis.pubsub()
    await pubsub.subscribe(console_streams.input_channel(host_name))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    ws = communicator(f"/ws/instances/{running_instance.pk}/console/", owner)
    assert (await ws.connect())[0]
    assert json.loads(await ws.receive_from(timeout=3)) == {"type": "state", "state": "running"}
    assert await ws.receive_from(timeout=3) == b"old line\r\n"
    await redis.xadd(key, {"d": "é".encode()[:1], "o": 10, "b": "1"})
    await redis.xadd(key, {"d": "é".encode()[1:] + b"\r\n", "o": 11, "b": "1"})
    received = b""
    while len(received) < 4:
        received += await ws.receive_from(timeout=3)
    assert received == "é\r\n".encode()

    await ws.send_to(bytes_data=b"hostname\r")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
    assert console_streams.decode(message["data"]) == console_streams.ConsoleInput("i", uuid, data=b"hostname\r")
    await ws.send_to(text_data=json.dumps({"type": "resize", "cols": 120, "rows": 40}))
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=3)
    assert console_streams.decode(message["data"]) == console_streams.ConsoleInput("r", uuid, rows=40, cols=120)
    await ws.send_to(text_data="not json")
    assert json.loads(await ws.receive_from(timeout=3))["type"] == "error"
    await ws.disconnect()
    await pubsub.aclose()
    await redis.delete(key)


async def test_console_closes_when_the_instance_is_suspended(running_instance):
    owner = await database_sync_to_async(lambda: running_instance.customer.user)()
    ws = communicator(f"/ws/instances/{running_instance.pk}/console/", owner)
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=3)
    await database_sync_to_async(transition)(running_instance.pk, InstanceState.SUSPENDED)
    assert json.loads(await ws.receive_from(timeout=3)) == {"type": "state", "state": "suspended"}
    assert (await ws.receive_output(timeout=3))["type"] == "websocket.close"
    again = communicator(f"/ws/instances/{running_instance.pk}/console/", owner)
    assert not (await again.connect())[0]


async def test_console_ticket_works_once(running_instance):
    ticket = await database_sync_to_async(issue_ticket)(instance_id=running_instance.pk, user_id=None)
    path = f"/ws/instances/{running_instance.pk}/console/?ticket={ticket.token}"
    first = communicator(path)
    assert (await first.connect())[0]
    await first.disconnect()
    assert not (await communicator(path).connect())[0]
    other = await database_sync_to_async(issue_ticket)(instance_id=running_instance.pk + 1000, user_id=None)
    wrong = communicator(f"/ws/instances/{running_instance.pk}/console/?ticket={other.token}")
    assert not (await wrong.connect())[0]
