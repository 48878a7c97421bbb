"""Issue 8's live events on the live stack: each event carries a sequence number; a browser
that reconnects (after losing its socket, or after the web server restarted) asks for what it
missed and gets exactly that; another customer never sees them."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest
import redis
from django.conf import settings
from websockets.sync.client import connect

from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from panel.realtime.hub import parse_id
from panel.realtime.publish import feed_stream, user_group
from tests.factories import CustomerFactory, UserFactory
from tests.stack.helpers import session_headers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


class Feed:
    """An events client as static/js/live.js is: remembers the last ``seq`` it saw and, when
    asked to reconnect, resumes with ``?since=``."""

    def __init__(self, stack, headers, since: str | None = None):
        url = f"{stack.ws_url}ws/events/" + (f"?since={since}" if since else "")
        self.ws = connect(url, additional_headers=headers, open_timeout=10)
        self.messages: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.seq = since
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.messages.put(json.loads(message))
        except Exception:
            pass

    def next(self, timeout: float = 30) -> dict:
        message = self.messages.get(timeout=timeout)
        self.seen.append(message)
        if message.get("seq"):
            self.seq = message["seq"]
        return message

    def until_state(self, instance_id: int, state: str, timeout: float = 30) -> list[dict]:
        """Messages up to the one that shows ``instance_id`` in ``state``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            got.append(message)
            if (message["type"] == "instance.state" and message["instance"]["id"] == instance_id
                    and message["instance"]["state"] == state):
                return got

    def until_operation(self, instance_id: int, state: str, timeout: float = 30) -> list[dict]:
        """Messages up to the one that shows an operation of ``instance_id`` in ``state``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            got.append(message)
            if (message["type"] == "operation" and message["operation"]["instance"] == instance_id
                    and message["operation"]["state"] == state):
                return got

    def nothing(self, wait: float = 0.5) -> bool:
        try:
            message = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        self.seen.append(message)
        return False

    def close(self) -> None:
        self.ws.close()


def _states(messages: list[dict], instance_id: int) -> list[str]:
    return [m["instance"]["state"] for m in messages
            if m["type"] == "instance.state" and m["instance"]["id"] == instance_id]


def test_events_carry_sequence_numbers_and_reach_only_those_entitled(stack):
    rows = stack.seed()
    customer, stranger = CustomerFactory(), CustomerFactory()
    owner_feed = Feed(stack, session_headers(customer.user, stack.url))
    staff_feed = Feed(stack, session_headers(UserFactory(is_staff=True), stack.url))
    stranger_feed = Feed(stack, session_headers(stranger.user, stack.url))
    try:
        for feed in (owner_feed, staff_feed, stranger_feed):
            assert feed.next()["type"] == "hello"
        instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="seq-1")
        for feed in (owner_feed, staff_feed):
            got = feed.until_state(instance.pk, "running")
            assert _states(got, instance.pk) == ["pending", "provisioning", "running"]
            if "operation" not in {m["type"] for m in got}:
                # The host's "finished" report overtook "started" (two panel workers): the
                # operation's one event, succeeded, comes right after the state it set.
                got += feed.until_operation(instance.pk, "succeeded")
            seqs = [parse_id(m["seq"]) for m in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert {m["type"] for m in got} >= {"instance.state", "operation"}
        assert stranger_feed.nothing()
    finally:
        for feed in (owner_feed, staff_feed, stranger_feed):
            feed.close()


def test_a_reconnecting_browser_gets_what_it_missed_exactly_once(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    feed = Feed(stack, headers)
    feed.next()
    instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="seq-2")
    feed.until_state(instance.pk, "running")
    feed.close()

    request_action(instance=instance, action="stop")  # happens while the browser is away
    missed_ids = _settled_feed_after(customer.user.pk, feed.seq, instance, "stopped")

    back = Feed(stack, headers, since=feed.seq)
    try:
        missed = [back.next() for _ in missed_ids]
        assert [m["seq"] for m in missed] == missed_ids  # all of it, in order, nothing else
        assert _states(missed, instance.pk) == ["stopped"]
        request_action(instance=instance, action="start")
        live = back.until_state(instance.pk, "running")
        assert "reload" not in [m["type"] for m in back.seen]
        assert parse_id(live[0]["seq"]) > parse_id(missed[-1]["seq"])  # then live, no repeats
    finally:
        back.close()


def _settled_feed_after(user_id: int, since: str, instance, state: str) -> list[str]:
    """Ids of the customer's feed after ``since`` once ``instance`` is in ``state`` and the
    feed has been quiet for a moment (the operation's last report comes after the state)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    key = feed_stream(user_group(user_id))
    try:
        deadline = time.monotonic() + 30
        while instance.__class__.objects.get(pk=instance.pk).state != state:
            assert time.monotonic() < deadline, f"{instance} never got {state}"
            time.sleep(0.1)
        ids: list[str] = []
        while True:
            now = [i.decode() for i, _ in client.xrange(key, min=f"({since}")]
            if now == ids:
                return ids
            ids = now
            time.sleep(0.7)
    finally:
        client.close()


def test_events_resume_across_a_web_server_restart(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    feed = Feed(stack, headers)
    feed.next()
    instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="seq-3")
    feed.until_state(instance.pk, "running")
    stack.stop("web")
    request_action(instance=instance, action="stop")  # published while no web server runs
    time.sleep(0.5)
    stack.start("web", *stack.commands["web"])
    stack.wait_http()
    back = Feed(stack, headers, since=feed.seq)
    try:
        missed = back.until_state(instance.pk, "stopped")
        assert _states(missed, instance.pk) == ["stopped"]
        assert "reload" not in [m["type"] for m in missed]
    finally:
        back.close()
        feed.close()
