from django.contrib import admin

from panel.accounts.models import Customer, SiteSettings, SshKey


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "external_id", "max_instances", "is_suspended")
    search_fields = ("name", "user__username", "user__email", "external_id")


@admin.register(SshKey)
class SshKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "customer", "fingerprint", "created_at")
    search_fields = ("name", "fingerprint", "customer__name", "customer__user__username")
    readonly_fields = ("fingerprint", "created_at")


@admin.register(SiteSettings)
class SiteSettingsAdmin(admin.ModelAdmin):
    list_display = ("__str__", "signup_open", "support_email")

    def has_add_permission(self, request) -> bool:
        return not SiteSettings.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
