from django.contrib import admin

from panel.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "source", "actor", "action", "target_type", "target_id", "message")
    list_filter = ("source", "action")
    search_fields = ("message", "target_id")
