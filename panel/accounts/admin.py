from django.contrib import admin

from panel.accounts.models import Customer


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("__str__", "user", "external_id", "max_instances", "is_suspended")
    search_fields = ("name", "user__username", "user__email", "external_id")
