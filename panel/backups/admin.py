from django.contrib import admin

from panel.backups.models import Backup, BackupSchedule, Snapshot


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ("name", "instance", "state", "size_bytes", "created_at")
    list_filter = ("state",)


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    list_display = ("id", "instance", "kind", "state", "size_bytes", "created_at")
    list_filter = ("state", "kind")


@admin.register(BackupSchedule)
class BackupScheduleAdmin(admin.ModelAdmin):
    list_display = ("instance", "enabled", "frequency", "keep", "next_run", "last_run")
