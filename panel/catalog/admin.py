from django.contrib import admin

from panel.catalog.models import Image, Plan


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "vcpus", "memory_mib", "disk_gib", "price_monthly", "is_active")
    list_filter = ("kind", "is_active")
    filter_horizontal = ("hosts",)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "size_bytes", "checksum", "is_active")
    list_filter = ("kind", "is_active")
