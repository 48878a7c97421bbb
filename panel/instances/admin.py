from django.contrib import admin

from panel.instances.models import Instance, Operation


class OperationInline(admin.TabularInline):
    model = Operation
    extra = 0
    fields = ("action", "state", "source", "error", "created_at", "finished_at")
    readonly_fields = fields


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("hostname", "kind", "state", "customer", "host", "plan", "created_at")
    list_filter = ("kind", "state", "host")
    search_fields = ("hostname", "uuid", "external_id")
    inlines = [OperationInline]


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("id", "instance", "action", "state", "source", "created_at", "finished_at")
    list_filter = ("state", "action")
