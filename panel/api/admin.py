"""Admin pages for API tokens: create one (its key is shown once), see use, revoke."""

from django import forms
from django.contrib import admin, messages

from panel.api.models import ApiToken
from panel.api.services.tokens import create_token, revoke_token


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name", "scope", "customer"]

    def clean(self):
        data = super().clean()
        if data.get("scope") == ApiToken.Scope.CUSTOMER and not data.get("customer"):
            self.add_error("customer", "A customer token needs a customer.")
        if data.get("scope") == ApiToken.Scope.BILLING and data.get("customer"):
            self.add_error("customer", "A billing token acts for every customer; leave this empty.")
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ("name", "scope", "customer", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("scope", "revoked_at")
    search_fields = ("name", "prefix", "customer__external_id")
    raw_id_fields = ("customer",)
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ("prefix", "created_at", "last_used_at", "revoked_at")
        return ("name", "scope", "customer", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            return
        token, key = create_token(
            name=obj.name, scope=obj.scope, customer=obj.customer if obj.scope == ApiToken.Scope.CUSTOMER else None
        )
        obj.pk = token.pk
        obj.__dict__.update(token.__dict__)
        messages.warning(request, f"The token is shown only now; copy it: {key}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            revoke_token(token=token)
        messages.success(request, f"{queryset.count()} tokens revoked.")
