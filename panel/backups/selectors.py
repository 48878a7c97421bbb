"""Reading an instance's snapshots, backups and schedule."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.instances.models import Instance


def snapshots_of(instance: Instance) -> QuerySet[Snapshot]:
    return instance.snapshots.order_by("created_at", "id")


def backups_of(instance: Instance) -> QuerySet[Backup]:
    return instance.backups.select_related("image").order_by("-created_at", "-id")


def get_backup(instance: Instance, pk) -> Backup:
    backup = (backups_of(instance).select_related("instance", "instance__plan").filter(pk=pk).first()
              if isinstance(pk, int) else None)
    if backup is None:
        raise Http404("No such backup.")
    return backup


def schedule_of(instance: Instance) -> BackupSchedule | None:
    return BackupSchedule.objects.filter(instance=instance).first()
