from django.contrib import admin

from panel.hosts.models import Host, IpAddress, IpPool


class IpPoolInline(admin.StackedInline):
    model = IpPool


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "is_enabled", "last_heartbeat", "cpus", "memory_mib", "virt_type")
    inlines = [IpPoolInline]


@admin.register(IpAddress)
class IpAddressAdmin(admin.ModelAdmin):
    list_display = ("address", "pool", "instance", "allocated_at")
