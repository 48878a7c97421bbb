"""Snapshots (kept on the instance's host, removed with the instance), backups (archives in
the backup target, kept after the instance is gone) and backup schedules."""

from __future__ import annotations

from datetime import timedelta

from django.db import models


class Snapshot(models.Model):
    class State(models.TextChoices):
        CREATING = "creating", "Being taken"
        READY = "ready", "Ready"
        DELETING = "deleting", "Being deleted"

    instance = models.ForeignKey("instances.Instance", on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField(default=0)
    with_memory = models.BooleanField(default=False)
    state = models.CharField(max_length=20, choices=State.choices, default=State.CREATING)
    operation = models.ForeignKey("instances.Operation", on_delete=models.SET_NULL, null=True,
                                  blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["instance", "name"], name="snapshot_unique_name")]

    def __str__(self) -> str:
        return f"{self.name} of {self.instance_id}"


class Backup(models.Model):
    class State(models.TextChoices):
        CREATING = "creating", "Being written"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Kind(models.TextChoices):
        MANUAL = "manual", "Manual"
        SCHEDULED = "scheduled", "Scheduled"

    instance = models.ForeignKey("instances.Instance", on_delete=models.CASCADE, related_name="backups")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MANUAL)
    state = models.CharField(max_length=20, choices=State.choices, default=State.CREATING)
    # What it holds, as it was when it was made (the host refuses a restore over another image).
    image = models.ForeignKey("catalog.Image", on_delete=models.PROTECT, related_name="+")
    disk_gib = models.PositiveIntegerField(default=0)
    host = models.ForeignKey("hosts.Host", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    archive_name = models.CharField(max_length=100, blank=True)
    path = models.CharField(max_length=1000, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    operation = models.ForeignKey("instances.Operation", on_delete=models.SET_NULL, null=True,
                                  blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"backup #{self.pk} of {self.instance_id} ({self.state})"


class BackupSchedule(models.Model):
    class Frequency(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"

    PERIODS = {Frequency.DAILY: timedelta(days=1), Frequency.WEEKLY: timedelta(days=7)}

    instance = models.OneToOneField("instances.Instance", on_delete=models.CASCADE, related_name="backup_schedule")
    enabled = models.BooleanField(default=True)
    frequency = models.CharField(max_length=10, choices=Frequency.choices, default=Frequency.DAILY)
    keep = models.PositiveSmallIntegerField(default=7, help_text="Scheduled backups kept; older ones are removed.")
    next_run = models.DateTimeField()
    last_run = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["enabled", "next_run"])]

    def __str__(self) -> str:
        return f"{self.frequency} backups of {self.instance_id}, keep {self.keep}"

    @property
    def period(self) -> timedelta:
        return self.PERIODS[self.frequency]
