"""Webhooks: a signed POST to every active endpoint on every service state change.

Deliveries are written in the same transaction as the state change (an outbox: a change that
commits is never without its deliveries) and sent by a Celery task after commit. A failed
attempt is retried with exponential backoff up to BERTH_WEBHOOK_MAX_ATTEMPTS; a beat sweep
re-sends any delivery whose task was lost. Each attempt first claims the delivery with a
short lease, so the task and the sweep never send the same attempt twice. A slow or failing
receiver only ever holds a panel worker for the HTTP timeout, never a request or a lock.

Deliveries about one service reach an endpoint in the order the changes happened: a delivery
is not attempted while an earlier one about the same service to the same endpoint is pending
(sending, or waiting for its retry), and the earlier one, once delivered or given up on, queues
the next. Without this the panel worker's processes raced: a receiver saw "running" before
"provisioning" and was left believing the service was still being set up.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from panel.webhooks.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

STATE_CHANGED = "service.state_changed"
DELIVER_TASK = "berth.panel.deliver_webhook"
RESPONSE_BODY_KEEP = 2000
SWEEP_BATCH = 500
Status = WebhookDelivery.Status


def _earlier_pending():
    """An Exists() for "an earlier delivery about the same service to the same endpoint is
    still pending"; deliveries that are about no service are never held back."""
    return Exists(WebhookDelivery.objects.filter(
        endpoint_id=OuterRef("endpoint_id"), service_id=OuterRef("service_id"),
        status=Status.PENDING, pk__lt=OuterRef("pk"),
    ))


def sign(body: bytes, secret: str) -> str:
    """The X-Berth-Signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def retry_delay(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failure: base, 2×base, 4×base, … capped at an hour."""
    base = settings.BERTH_WEBHOOK_RETRY_SECONDS
    return timedelta(seconds=min(base * 2 ** (attempts - 1), 3600))


def _send_task(delivery_id: int, countdown: float = 0) -> None:
    from panel.celery import app  # noqa: PLC0415 (celery loads Django settings)

    try:
        app.send_task(DELIVER_TASK, args=[delivery_id], queue="panel", countdown=countdown)
    except Exception:  # the broker being away must not fail the state change; the sweep resends
        logger.exception("could not queue webhook delivery %s", delivery_id)


def service_payload(instance) -> dict[str, Any]:
    from panel.api.serializers import ServiceSerializer  # noqa: PLC0415 (api imports instances)

    return dict(ServiceSerializer(instance).data)


def enqueue_state_change(instance, *, previous_state: str | None) -> list[WebhookDelivery]:
    """Record a delivery of the instance's new state to every active endpoint, sent after
    commit. Called by ``publish_instance`` for every state change (and the order itself)."""
    if previous_state == instance.state:
        return []
    endpoints = list(WebhookEndpoint.objects.filter(is_active=True).values_list("pk", flat=True))
    if not endpoints:
        return []
    now = timezone.now()
    payload = {
        "event": STATE_CHANGED,
        "id": uuid.uuid4().hex,
        "service": service_payload(instance),
        "previous_state": previous_state,
        "at": now.isoformat(),
    }
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint_id=pk, event=STATE_CHANGED, service_id=instance.pk, payload=payload,
            next_attempt_at=now,
        )
        for pk in endpoints
    )
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: [_send_task(pk) for pk in ids])
    return deliveries


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str, str]:
    """(status code or None, start of the response body, error text)."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # a redirect is an answer, not a delivery
            return None

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(request, timeout=settings.BERTH_WEBHOOK_TIMEOUT) as response:
            return response.status, response.read(RESPONSE_BODY_KEEP).decode(errors="replace"), ""
    except urllib.error.HTTPError as exc:
        text = exc.read(RESPONSE_BODY_KEEP).decode(errors="replace") if exc.fp else ""
        return exc.code, text, f"HTTP {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return None, "", f"{type(exc).__name__}: {exc}"[:500]


def attempt_delivery(*, delivery_id: int) -> WebhookDelivery | None:
    """One attempt, if the delivery is due, nobody else is sending it and nothing earlier about
    its service waits for the same endpoint; None otherwise."""
    now = timezone.now()
    lease = timedelta(seconds=settings.BERTH_WEBHOOK_TIMEOUT + 30)
    claimed = WebhookDelivery.objects.filter(
        # A second of slack: a countdown task may wake a hair before the time it was set for.
        ~_earlier_pending(),
        pk=delivery_id, status=Status.PENDING, next_attempt_at__lte=now + timedelta(seconds=1),
    ).update(next_attempt_at=now + lease)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    delivery.attempts += 1
    if not endpoint.is_active:
        code, text, error = None, "", "The endpoint was disabled."
        delivery.attempts = settings.BERTH_WEBHOOK_MAX_ATTEMPTS
    else:
        body = encode(delivery.payload)
        code, text, error = _post(endpoint.url, body, {
            "Content-Type": "application/json",
            "User-Agent": "Berth-Webhooks/1",
            "X-Berth-Event": delivery.event,
            "X-Berth-Delivery": str(delivery.pk),
            "X-Berth-Signature": sign(body, endpoint.secret),
        })
    delivery.response_code, delivery.response_body, delivery.last_error = code, text, error
    finished = timezone.now()
    if code is not None and 200 <= code < 300:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = Status.DELIVERED, finished, None
        delivery.last_error = ""
    elif delivery.attempts >= settings.BERTH_WEBHOOK_MAX_ATTEMPTS:
        delivery.status, delivery.next_attempt_at = Status.FAILED, None
    else:
        delay = retry_delay(delivery.attempts)
        delivery.next_attempt_at = finished + delay
        transaction.on_commit(lambda: _send_task(delivery.pk, countdown=delay.total_seconds()))
    delivery.save(update_fields=[
        "attempts", "status", "response_code", "response_body", "last_error", "next_attempt_at",
        "delivered_at",
    ])
    if delivery.status != Status.PENDING:
        transaction.on_commit(lambda: _send_next(delivery))
    return delivery


def _send_next(delivery: WebhookDelivery) -> None:
    """Queue the delivery that waited for ``delivery`` (the next about its service to its
    endpoint). Its own task may have come and gone while this one was pending."""
    if delivery.service_id is None:
        return
    waiting = (
        WebhookDelivery.objects.filter(
            endpoint_id=delivery.endpoint_id, service_id=delivery.service_id,
            status=Status.PENDING, pk__gt=delivery.pk,
        ).order_by("pk").values_list("pk", flat=True).first()
    )
    if waiting is not None:
        _send_task(waiting)


def retry_now(*, delivery: WebhookDelivery) -> None:
    """The admin's "send again": a fresh round of attempts, starting now."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=Status.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    transaction.on_commit(lambda: _send_task(delivery.pk))


def send_due_deliveries() -> int:
    """The beat sweep: queue every delivery that is due (its task was lost, or it is late) and
    not waiting behind an earlier one."""
    due = list(
        WebhookDelivery.objects.filter(
            ~_earlier_pending(), status=Status.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at").values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    for pk in due:
        _send_task(pk)
    return len(due)
