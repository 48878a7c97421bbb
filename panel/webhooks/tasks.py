"""Webhook tasks (queue ``panel``): one delivery attempt, and the sweep for due ones."""

from celery import shared_task

from panel.webhooks import services


@shared_task(name="berth.panel.deliver_webhook")
def deliver_webhook(delivery_id: int) -> None:
    services.attempt_delivery(delivery_id=delivery_id)


@shared_task(name="berth.panel.send_due_webhooks")
def send_due_webhooks() -> int:
    return services.send_due_deliveries()
