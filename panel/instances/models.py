"""Instances (containers and VMs) and Operations, the log of every action taken on a host."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from panel.catalog.models import InstanceKind


class InstanceState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    REBOOTING = "rebooting", "Rebooting"
    SUSPENDED = "suspended", "Suspended"
    TERMINATING = "terminating", "Terminating"
    TERMINATED = "terminated", "Terminated"
    ERROR = "error", "Error"


class InstanceQuerySet(models.QuerySet):
    def live(self):
        """Instances that hold resources on a host (everything but terminated)."""
        return self.exclude(state=InstanceState.TERMINATED)

    def owned_by(self, user):
        return self.filter(customer__user=user)


class Instance(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    customer = models.ForeignKey(
        "accounts.Customer", on_delete=models.PROTECT, related_name="instances"
    )
    kind = models.CharField(max_length=20, choices=InstanceKind.choices)
    plan = models.ForeignKey("catalog.Plan", on_delete=models.PROTECT, related_name="instances")
    image = models.ForeignKey("catalog.Image", on_delete=models.PROTECT, related_name="instances")
    hostname = models.CharField(max_length=63)
    host = models.ForeignKey(
        "hosts.Host", on_delete=models.PROTECT, related_name="instances", null=True, blank=True
    )
    state = models.CharField(
        max_length=20, choices=InstanceState.choices, default=InstanceState.PENDING
    )
    state_version = models.PositiveIntegerField(
        default=0, help_text="Bumped by every state change, so clients can drop stale events."
    )
    state_before_suspend = models.CharField(max_length=20, blank=True)
    suspended_reason = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True, help_text="Why the instance is in the error state.")
    external_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    mac = models.CharField(max_length=17, blank=True)
    uid_slot = models.PositiveIntegerField(null=True, blank=True)
    root_password_hash = models.CharField(max_length=200, blank=True)
    ssh_keys = models.TextField(blank=True)
    # Application containers (OCI images): the order's command (replaces the image's Cmd) and
    # environment (added to its Env), and the image an upgrade replaced, kept for a rollback.
    app_command = models.JSONField(null=True, blank=True)
    app_env = models.JSONField(default=dict, blank=True)
    previous_image = models.ForeignKey(
        "catalog.Image", on_delete=models.PROTECT, related_name="+", null=True, blank=True,
        help_text="The image before the last upgrade: what a rollback returns to.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)

    objects = InstanceQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "uid_slot"],
                condition=~Q(state="terminated"),
                name="instance_unique_uid_slot_per_host",
            ),
        ]
        indexes = [models.Index(fields=["state"]), models.Index(fields=["customer", "state"])]

    def __str__(self) -> str:
        return f"{self.hostname} (#{self.pk})"

    @property
    def ipv4(self) -> list[str]:
        return [ip.address for ip in self.ip_addresses.all()]

    @property
    def is_live(self) -> bool:
        return self.state != InstanceState.TERMINATED


class Operation(models.Model):
    class Action(models.TextChoices):
        CREATE = "create", "Create"
        START = "start", "Start"
        STOP = "stop", "Stop"
        REBOOT = "reboot", "Reboot"
        REBUILD = "rebuild", "Rebuild"
        CHANGE_PLAN = "change_plan", "Change plan"
        SUSPEND = "suspend", "Suspend"
        UNSUSPEND = "unsuspend", "Unsuspend"
        TERMINATE = "terminate", "Terminate"
        UPGRADE = "upgrade", "Upgrade"
        ROLLBACK = "rollback", "Roll back"
        SNAPSHOT = "snapshot", "Take snapshot"
        RESTORE_SNAPSHOT = "restore_snapshot", "Restore snapshot"
        DELETE_SNAPSHOT = "delete_snapshot", "Delete snapshot"
        BACKUP = "backup", "Back up"
        RESTORE_BACKUP = "restore_backup", "Restore backup"
        MOVE = "move", "Move to another host"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        UI = "ui", "Web panel"
        API = "api", "API"
        SYSTEM = "system", "System"

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="operations")
    action = models.CharField(max_length=20, choices=Action.choices)
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.UI)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    params = models.JSONField(default=dict, blank=True)
    progress = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"{self.action} #{self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.SUCCEEDED, self.State.FAILED)

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None
