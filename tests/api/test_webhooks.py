"""Webhooks: a delivery per endpoint on each state change, signed, retried with backoff, given
up on after the last attempt, never sent twice at once, in order per service and endpoint, and
visible to the admin."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from panel.instances.models import InstanceState
from panel.instances.states import transition
from panel.webhooks import services
from panel.webhooks.models import WebhookDelivery
from tests.factories import WebhookEndpointFactory

pytestmark = pytest.mark.django_db
Status = WebhookDelivery.Status


class Receiver:
    """A local webhook receiver answering with ``status`` after ``delay`` seconds."""

    def __init__(self, status=200, delay=0.0):
        self.status, self.delay, self.requests = status, delay, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"thanks" if receiver.status < 300 else b"broken")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_no_endpoint_no_delivery(running):
    transition(running.pk, InstanceState.STOPPED)
    assert not WebhookDelivery.objects.exists()


def test_each_state_change_makes_a_delivery_per_active_endpoint(
    running, sent_tasks, django_capture_on_commit_callbacks
):
    one, two = WebhookEndpointFactory(), WebhookEndpointFactory()
    WebhookEndpointFactory(is_active=False)
    with django_capture_on_commit_callbacks(execute=True):
        transition(running.pk, InstanceState.STOPPED)
    deliveries = WebhookDelivery.objects.order_by("endpoint_id")
    assert [d.endpoint_id for d in deliveries] == [one.pk, two.pk]
    payload = deliveries[0].payload
    assert payload["event"] == "service.state_changed" and payload["previous_state"] == "running"
    assert payload["service"]["id"] == running.pk and payload["service"]["state"] == "stopped"
    assert payload["service"]["ipv4"] == running.ipv4 and payload["at"]
    assert [t["name"] for t in sent_tasks] == ["berth.panel.deliver_webhook"] * 2
    assert all(t["queue"] == "panel" for t in sent_tasks)


def test_a_change_that_rolls_back_sends_nothing(running, sent_tasks, django_capture_on_commit_callbacks):
    from django.db import transaction

    WebhookEndpointFactory()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), \
            transaction.atomic():
        transition(running.pk, InstanceState.STOPPED)
        raise RuntimeError
    assert not WebhookDelivery.objects.exists() and sent_tasks == []


def test_a_delivery_is_signed_and_recorded(running, receiver, sent_tasks):
    hook = receiver()
    endpoint = WebhookEndpointFactory(url=hook.url, secret="s3cret")
    transition(running.pk, InstanceState.STOPPED)
    delivery = WebhookDelivery.objects.get()
    services.attempt_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_code) == (Status.DELIVERED, 1, 200)
    assert delivery.response_body == "thanks" and delivery.delivered_at
    [(headers, body)] = hook.requests
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Berth-Signature"] == expected
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == delivery.payload
    assert endpoint.deliveries.count() == 1
    assert services.attempt_delivery(delivery_id=delivery.pk) is None  # delivered: not again
    assert len(hook.requests) == 1


def test_failures_back_off_then_give_up(running, receiver, sent_tasks, settings, monkeypatch):
    settings.BERTH_WEBHOOK_MAX_ATTEMPTS = 3
    settings.BERTH_WEBHOOK_RETRY_SECONDS = 10
    hook = receiver(status=500)
    WebhookEndpointFactory(url=hook.url)
    transition(running.pk, InstanceState.STOPPED)
    delivery = WebhookDelivery.objects.get()
    waits = []
    for attempt in (1, 2, 3):
        before = timezone.now()
        services.attempt_delivery(delivery_id=delivery.pk)
        delivery.refresh_from_db()
        assert delivery.attempts == attempt and delivery.response_code == 500
        assert delivery.response_body == "broken"
        if attempt < 3:
            assert delivery.status == Status.PENDING
            waits.append(round((delivery.next_attempt_at - before).total_seconds()))
            # not due yet: a second attempt now is refused
            assert services.attempt_delivery(delivery_id=delivery.pk) is None
            WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert waits == [10, 20]
    assert delivery.status == Status.FAILED and delivery.next_attempt_at is None
    assert len(hook.requests) == 3


def test_an_unreachable_or_slow_receiver_is_given_up_on_quickly(running, receiver, settings, sent_tasks):
    settings.BERTH_WEBHOOK_TIMEOUT = 0.5
    slow = receiver(delay=3)
    WebhookEndpointFactory(url=slow.url)
    WebhookEndpointFactory(url="http://127.0.0.1:9/nobody-listens")
    transition(running.pk, InstanceState.STOPPED)
    for delivery in WebhookDelivery.objects.all():
        started = time.monotonic()
        services.attempt_delivery(delivery_id=delivery.pk)
        assert time.monotonic() - started < 2
        delivery.refresh_from_db()
        assert delivery.status == Status.PENDING and delivery.response_code is None
        assert delivery.last_error


def test_the_sweep_requeues_due_deliveries(running, sent_tasks):
    WebhookEndpointFactory()
    transition(running.pk, InstanceState.STOPPED)
    delivery = WebhookDelivery.objects.get()
    assert services.send_due_deliveries() == 1
    assert sent_tasks[-1]["name"] == "berth.panel.deliver_webhook"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=Status.DELIVERED)
    assert services.send_due_deliveries() == 0


def _states(hook):
    return [json.loads(body)["service"]["state"] for _, body in hook.requests]


def test_a_later_change_waits_for_the_earlier_one_to_reach_the_endpoint(
    running, receiver, sent_tasks, django_capture_on_commit_callbacks
):
    """The panel worker's processes take deliveries in any order; the receiver still sees
    stopped before running (a CI run once saw "running" arrive before "provisioning")."""
    hook = receiver()
    WebhookEndpointFactory(url=hook.url)
    transition(running.pk, InstanceState.STOPPED)
    transition(running.pk, InstanceState.RUNNING)
    stopped, started = WebhookDelivery.objects.order_by("pk")
    assert stopped.service_id == started.service_id == running.pk

    assert services.attempt_delivery(delivery_id=started.pk) is None  # its task came first
    assert hook.requests == []
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.attempt_delivery(delivery_id=stopped.pk)
    assert [t["args"] for t in sent_tasks] == [[started.pk]]  # the one that waited is queued
    services.attempt_delivery(delivery_id=started.pk)
    assert _states(hook) == ["stopped", "running"]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}


def test_a_change_waits_while_the_earlier_one_is_retried_and_goes_once_it_is_given_up(
    running, receiver, sent_tasks, settings, django_capture_on_commit_callbacks
):
    settings.BERTH_WEBHOOK_MAX_ATTEMPTS = 2
    hook = receiver(status=500)
    WebhookEndpointFactory(url=hook.url)
    transition(running.pk, InstanceState.STOPPED)
    transition(running.pk, InstanceState.RUNNING)
    stopped, started = WebhookDelivery.objects.order_by("pk")
    services.attempt_delivery(delivery_id=stopped.pk)  # fails: retried later
    WebhookDelivery.objects.filter(pk__in=[stopped.pk, started.pk]).update(next_attempt_at=timezone.now())
    assert services.attempt_delivery(delivery_id=started.pk) is None
    assert services.send_due_deliveries() == 1 and sent_tasks[-1]["args"] == [stopped.pk]

    hook.status = 200
    with django_capture_on_commit_callbacks(execute=True):
        WebhookDelivery.objects.filter(pk=stopped.pk).update(next_attempt_at=timezone.now())
        hook.status = 500
        services.attempt_delivery(delivery_id=stopped.pk)  # the last attempt fails too: given up
    stopped.refresh_from_db()
    assert stopped.status == Status.FAILED and sent_tasks[-1]["args"] == [started.pk]
    hook.status = 200
    assert services.attempt_delivery(delivery_id=started.pk).status == Status.DELIVERED
    assert _states(hook) == ["stopped", "stopped", "running"]


def test_a_failing_endpoint_or_another_service_holds_nothing_else_back(
    running, customer, plan, image, host, receiver, sent_tasks
):
    from panel.instances.services.ordering import order_instance

    broken, working = receiver(status=500), receiver()
    WebhookEndpointFactory(url=broken.url)
    good = WebhookEndpointFactory(url=working.url)
    transition(running.pk, InstanceState.STOPPED)
    other = order_instance(customer=customer, plan=plan, image=image, hostname="other")
    transition(other.pk, InstanceState.PROVISIONING)
    for delivery in WebhookDelivery.objects.filter(endpoint__url=broken.url).order_by("pk"):
        services.attempt_delivery(delivery_id=delivery.pk)  # fail (or wait) for a retry
    transition(running.pk, InstanceState.RUNNING)
    for delivery in WebhookDelivery.objects.filter(endpoint=good).order_by("pk"):
        assert services.attempt_delivery(delivery_id=delivery.pk).status == Status.DELIVERED
    assert [(json.loads(b)["service"]["id"], json.loads(b)["service"]["state"]) for _, b in working.requests] == [
        (running.pk, "stopped"), (other.pk, "pending"), (other.pk, "provisioning"), (running.pk, "running"),
    ]
    assert [d["service"]["state"] for d in WebhookDelivery.objects.filter(
        endpoint__url=broken.url, status=Status.PENDING).order_by("pk").values_list("payload", flat=True)
    ] == ["stopped", "pending", "provisioning", "running"]


def test_admins_see_deliveries_and_responses(admin_client, running, receiver, sent_tasks):
    hook = receiver(status=503)
    WebhookEndpointFactory(url=hook.url)
    transition(running.pk, InstanceState.STOPPED)
    delivery = WebhookDelivery.objects.get()
    services.attempt_delivery(delivery_id=delivery.pk)
    listing = admin_client.get("/admin/webhooks/webhookdelivery/")
    assert listing.status_code == 200 and b"503" in listing.content
    found = admin_client.get("/admin/webhooks/webhookdelivery/", {"q": str(running.pk)})
    assert found.status_code == 200 and found.context["cl"].result_count == 1
    assert admin_client.get("/admin/webhooks/webhookdelivery/", {"q": "not a number"}).status_code == 200
    none = admin_client.get("/admin/webhooks/webhookdelivery/", {"q": str(running.pk + 1)})
    assert none.context["cl"].result_count == 0
    detail = admin_client.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/")
    assert b"broken" in detail.content
    response = admin_client.post("/admin/webhooks/webhookdelivery/",
                                 {"action": "send_again", "_selected_action": [delivery.pk]})
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.attempts == 0 and delivery.status == Status.PENDING
