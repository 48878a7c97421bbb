"""Webhooks: the URLs an admin wants told about every service state change, and each
delivery to each of them with its attempts and the receiver's last answer."""

import secrets

from django.db import models


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class WebhookEndpoint(models.Model):
    url = models.URLField(max_length=500)
    secret = models.CharField(
        max_length=200, default=new_secret,
        help_text="Signs every delivery: X-Berth-Signature: sha256=<hex HMAC-SHA256 of the body>.",
    )
    is_active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=60)
    # Not a foreign key: a delivery is the record of what was sent, whatever becomes of the row.
    service_id = models.BigIntegerField(
        null=True, blank=True,
        help_text="The service the event is about: its deliveries reach each endpoint in order.",
    )
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of the receiver's answer.")
    last_error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            # "Is an earlier delivery about this service still on its way to this endpoint?"
            models.Index(
                fields=["endpoint", "service_id", "id"], name="webhook_pending_per_service",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint} ({self.status})"
