from django.contrib import admin

from panel.hosts.models import Host, HostSample, IpAddress, IpPool, PlacementPolicy


class IpPoolInline(admin.StackedInline):
    model = IpPool


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "is_enabled", "is_draining", "last_heartbeat", "cpus", "memory_mib",
                    "virtualization", "virt_reason")
    list_filter = ("status", "is_enabled", "is_draining", "virt_type")
    # Credentials change only through issue_credential (Redis must follow); the raw data shows them.
    # What the host's agent decided at its KVM check (workers/drivers/vm/capabilities.py), and
    # why, is the agent's to say: the next heartbeat would overwrite an edit.
    readonly_fields = ("credential_hash", "credential_issued_at", "last_heartbeat", "facts",
                       "supports_containers", "supports_vms", "virt_type", "virt_reason")
    inlines = [IpPoolInline]

    @admin.display(description="VMs run under", ordering="virt_type")
    def virtualization(self, host: Host) -> str:
        if not host.supports_vms:
            return "no VMs (KVM/TCG check not finished or failed)"
        return {"kvm": "KVM", "qemu": "TCG (software emulation)"}.get(host.virt_type, host.virt_type)


@admin.register(IpAddress)
class IpAddressAdmin(admin.ModelAdmin):
    list_display = ("address", "pool", "instance", "allocated_at")


@admin.register(HostSample)
class HostSampleAdmin(admin.ModelAdmin):
    list_display = ("host", "at", "load1", "memory_used_mib", "instances_running")
    list_filter = ("host",)


admin.site.register(PlacementPolicy)
