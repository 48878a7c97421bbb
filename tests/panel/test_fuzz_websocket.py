"""Malformed WebSocket frames (binary garbage, huge frames, invalid JSON, wrong types), to the
console and to the events feed: the consumer answers with a readable error frame or ignores
the frame, stays up for the next one, shows no stack trace, and creates nothing.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panel.asgi import application
from panel.audit.models import AuditEntry
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db(transaction=True)

BAD_TEXT = [
    "", "not json", "{", "[]", "null", "1", '"resize"', "{}", '{"type": "resize"}',
    '{"type": "resize", "rows": "many", "cols": 80}', '{"type": "resize", "rows": -1, "cols": 80}',
    '{"type": "resize", "rows": 1e308, "cols": 80}', '{"type": "resize", "rows": Infinity, "cols": 80}',
    '{"type": "resize", "rows": NaN, "cols": NaN}', "[" * 100_000 + "]" * 100_000, '{"type": "resize", "rows": [24], "cols": {}}',
    '{"type": "resize", "rows": true, "cols": false}', '{"type": "shutdown"}', '{"type": null}',
    '{"type": "resize", "rows": 24, "cols": 80, "__proto__": {}}', "\x00\x01\x02", "\ud7ff" * 1000,
    "x" * (2 * 1024 * 1024),
]
BAD_BYTES = [b"\x00" * 10, bytes(range(256)), b"\xff\xfe\xfd", b"\x1b[6n\x1b]0;pwn\x07", b"A" * (1024 * 1024)]


def _owner_with_running_instance() -> tuple[object, Instance]:
    HostFactory()
    customer = CustomerFactory()
    instance = order_instance(customer=customer, plan=PlanFactory(), image=ImageFactory(name="busybox"),
                              hostname="fuzz")
    operation = instance.operations.get()
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=True, power_state="running")
    return customer.user, instance


@pytest.fixture
def console_owner(sent_tasks):
    user, instance = _owner_with_running_instance()
    return user, instance, _headers(user)


def _headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
            (b"origin", b"http://127.0.0.1")]


def _counts() -> tuple[int, int]:
    return Instance.objects.count(), Operation.objects.count()


async def _send(communicator: WebsocketCommunicator, *, text: str | None = None,
                data: bytes | None = None) -> None:
    """A frame as the server receives it (empty frames included, which send_to refuses)."""
    await communicator.send_input({"type": "websocket.receive", "text": text, "bytes": data})


async def _drain(communicator: WebsocketCommunicator) -> list[dict]:
    """Text frames the server sent in answer (binary console output is skipped)."""
    answers = []
    while not await communicator.receive_nothing(timeout=0.3):
        message = await communicator.receive_output()
        if message["type"] == "websocket.close":
            raise AssertionError(f"the server closed the socket: {message}")
        if message.get("text"):
            answers.append(json.loads(message["text"]))
    return answers


async def _still_up(communicator: WebsocketCommunicator) -> None:
    """A valid frame after the bad ones is taken without complaint."""
    await _drain(communicator)  # the answers to the bad ones
    await communicator.send_to(text_data=json.dumps({"type": "resize", "rows": 24, "cols": 80}))
    answers = await _drain(communicator)
    assert not [a for a in answers if a.get("type") == "error"], answers


async def test_the_console_refuses_malformed_frames_and_stays_up(sent_tasks):
    user, instance = await sync_to_async(_owner_with_running_instance)()
    before = await sync_to_async(_counts)()
    communicator = WebsocketCommunicator(application, f"/ws/instances/{instance.pk}/console/",
                                         headers=await sync_to_async(_headers)(user))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    await _drain(communicator)
    for frame in BAD_TEXT:
        await _send(communicator, text=frame)
        for answer in await _drain(communicator):
            if answer.get("type") == "error":
                assert answer["detail"] and "Traceback" not in answer["detail"] and len(answer["detail"]) < 300
    for frame in BAD_BYTES:
        await _send(communicator, data=frame)
        await _drain(communicator)
    await _still_up(communicator)
    await communicator.disconnect()
    assert await sync_to_async(_counts)() == before


@given(frames=st.lists(st.one_of(st.binary(max_size=2048).map(lambda b: ("bytes", b)),
                                 st.text(max_size=512).map(lambda t: ("text", t)),
                                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers()
                                              | st.text(max_size=20),
                                              lambda inner: st.lists(inner, max_size=4)
                                              | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                                              max_leaves=20).map(lambda j: ("text", json.dumps(j)))),
                       min_size=1, max_size=8))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_any_frames_leave_the_console_up(frames, console_owner):
    import asyncio  # noqa: PLC0415

    user, instance, headers = console_owner

    async def run() -> None:
        communicator = WebsocketCommunicator(application, f"/ws/instances/{instance.pk}/console/",
                                             headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        for kind, data in frames:
            await _send(communicator, **({"data": data} if kind == "bytes" else {"text": data}))
        await _still_up(communicator)
        await communicator.disconnect()

    asyncio.run(run())


async def test_the_events_feed_ignores_whatever_is_sent_to_it(sent_tasks):
    user, _ = await sync_to_async(_owner_with_running_instance)()
    before = await sync_to_async(lambda: (*_counts(), AuditEntry.objects.count()))()
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=await sync_to_async(_headers)(user))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    await _drain(communicator)
    for frame in BAD_TEXT:
        await _send(communicator, text=frame)
    for frame in BAD_BYTES:
        await _send(communicator, data=frame)
    assert not [a for a in await _drain(communicator) if a.get("type") == "error"]
    await communicator.disconnect()
    assert await sync_to_async(lambda: (*_counts(), AuditEntry.objects.count()))() == before
