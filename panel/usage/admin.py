from django.contrib import admin

from panel.usage.models import InstanceStateChange, UsageSample


@admin.register(UsageSample)
class UsageSampleAdmin(admin.ModelAdmin):
    list_display = ("instance", "at", "cpu_seconds", "memory_bytes", "net_rx_bytes", "net_tx_bytes",
                    "disk_used_bytes")
    list_filter = ("instance__host",)
    raw_id_fields = ("instance",)
    date_hierarchy = "at"


@admin.register(InstanceStateChange)
class InstanceStateChangeAdmin(admin.ModelAdmin):
    list_display = ("instance", "from_state", "to_state", "at")
    list_filter = ("to_state",)
    raw_id_fields = ("instance",)
