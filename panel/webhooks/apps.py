from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "panel.webhooks"
    label = "webhooks"
