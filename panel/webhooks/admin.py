"""Admin pages: webhook URLs to set up, and every delivery with the receiver's answer."""

from django.contrib import admin, messages

from panel.webhooks import services
from panel.webhooks.models import WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "is_active", "description", "created_at")
    list_filter = ("is_active",)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "endpoint", "status", "attempts", "response_code", "created_at",
                    "delivered_at", "next_attempt_at")
    list_filter = ("status", "endpoint", "event")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["send_again"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Send again now")
    def send_again(self, request, queryset) -> None:
        for delivery in queryset:
            services.retry_now(delivery=delivery)
        messages.success(request, f"{queryset.count()} deliveries queued again.")
