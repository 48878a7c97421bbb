"""Admin pages: webhook URLs to set up, and every delivery with the receiver's answer."""

from django import forms
from django.contrib import admin, messages

from panel.webhooks import services
from panel.webhooks.models import WebhookDelivery, WebhookEndpoint


class WebhookEndpointForm(forms.ModelForm):
    """The signing secret is write-only: shown once when Berth makes it, never rendered again."""

    new_secret = forms.CharField(
        label="Signing secret", required=False, max_length=200, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current secret (a new endpoint gets a random one, "
                  "shown once after saving). Type one to replace it.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "is_active", "description")

    def clean_new_secret(self) -> str:
        secret = self.cleaned_data["new_secret"]
        if secret and len(secret) < 16:
            raise forms.ValidationError("Use at least 16 characters, or leave it empty.")
        return secret


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    fields = ("url", "new_secret", "is_active", "description")
    list_display = ("url", "is_active", "description", "created_at")
    list_filter = ("is_active",)

    def save_model(self, request, obj, form, change) -> None:
        typed = form.cleaned_data.get("new_secret")
        if typed:
            obj.secret = typed
        super().save_model(request, obj, form, change)
        if not change and not typed:
            messages.warning(request, f"Signing secret of {obj.url}: {obj.secret} — copy it to the "
                                      "receiver now; Berth does not show it again.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "service_id", "endpoint", "status", "attempts", "response_code",
                    "created_at", "delivered_at", "next_attempt_at")
    search_fields = ("=service_id",)
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
