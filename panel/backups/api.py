"""Snapshots, backups and backup schedules of a service in the billing API (/api/v1/services/
{id}/snapshots/…, …/backups/…, …/backup-schedule/). Each action answers 202 with the operation
to follow at /api/v1/operations/{id}/, as the service actions do; errors are problem+json."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from panel.api import selectors as api_selectors
from panel.api.fields import MAX_ID, IdReferenceField, StrictCharField, StrictIntegerField
from panel.api.serializers import (
    EXTERNAL_ID_HELP,
    HOSTNAME_RE,
    ActionAcceptedSerializer,
    HostnameField,
)
from panel.api.views.base import ApiView
from panel.backups import selectors, services
from panel.backups.models import Backup, BackupSchedule
from panel.catalog.models import Plan
from panel.instances.models import Operation
from panel.instances.validators import validate_hostname

TAGS = ["Snapshots and backups"]
SOURCE = Operation.Source.API


# --- serializers ----------------------------------------------------------------------------

@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "true or false (a JSON boolean) is required."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class SnapshotSerializer(serializers.Serializer):
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=["creating", "ready", "deleting"])
    size_bytes = serializers.IntegerField(help_text="Disk space the snapshot takes on the host.")
    with_memory = serializers.BooleanField(help_text="VMs: the guest's memory was saved with it.")
    created_at = serializers.DateTimeField()
    operation = serializers.IntegerField(source="operation_id", allow_null=True,
                                         help_text="The operation that took it.")


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": 64,
                     "pattern": services.SNAPSHOT_NAME_PATTERN})
class SnapshotNameField(StrictCharField):
    pass


class SnapshotCreateSerializer(serializers.Serializer):
    name = SnapshotNameField(
        required=False, min_length=1, max_length=64,
        help_text="1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit; default: "
                  "snap-<date>-<time>. Unique per service.",
    )

    def validate_name(self, value: str) -> str:
        if not services.SNAPSHOT_NAME_RE.match(value):
            raise serializers.ValidationError(
                "Use lower-case letters, digits, '-' and '_', starting with a letter or digit.")
        return value


class SnapshotAcceptedSerializer(ActionAcceptedSerializer):
    snapshot = SnapshotSerializer()


class BackupSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    service = serializers.IntegerField(source="instance_id")
    kind = serializers.ChoiceField(choices=Backup.Kind.choices, help_text="manual, or made by the schedule.")
    state = serializers.ChoiceField(choices=Backup.State.choices)
    image = serializers.IntegerField(source="image_id", help_text="The image the backed-up disk runs.")
    size_bytes = serializers.IntegerField(help_text="Size of the compressed archive.")
    sha256 = serializers.CharField(help_text="SHA-256 of the archive, checked before every restore.")
    error = serializers.CharField(help_text="Why it failed.")
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    operation = serializers.IntegerField(source="operation_id", allow_null=True,
                                         help_text="The operation that wrote it.")


class BackupAcceptedSerializer(ActionAcceptedSerializer):
    backup = BackupSerializer()


class NewServiceSerializer(serializers.Serializer):
    hostname = HostnameField(min_length=1, max_length=63, help_text="The new service's hostname.")
    plan = IdReferenceField(queryset=Plan.objects.all(), name="plan", required=False,
                            help_text="Default: the backed-up service's plan. Same kind, a disk at least as large.")
    external_id = StrictCharField(required=False, min_length=1, max_length=100, help_text=EXTERNAL_ID_HELP)

    def validate_hostname(self, value: str) -> str:
        if not HOSTNAME_RE.fullmatch(value):
            raise serializers.ValidationError("Use only letters, digits and hyphens, not only digits, and do "
                                              "not start or end with a hyphen.")
        try:
            return validate_hostname(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


class BackupRestoreSerializer(serializers.Serializer):
    new_service = NewServiceSerializer(
        required=False,
        help_text="Restore into a new service of the same customer instead of the backed-up one: it "
                  "is ordered (quota and placement as any order), then the backup is restored into it.",
    )


class BackupRestoreAcceptedSerializer(ActionAcceptedSerializer):
    new_service = serializers.BooleanField(
        help_text="true: `service` is the new service and `operation` its creation; the restore "
                  "follows as its next operation.")


class ScheduleSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    frequency = serializers.ChoiceField(choices=BackupSchedule.Frequency.choices)
    keep = serializers.IntegerField(help_text="Scheduled backups kept; older ones are removed. Manual ones stay.")
    next_run = serializers.DateTimeField(allow_null=True)
    last_run = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(help_text="Why the last due backup could not start.")


class ScheduleUpdateSerializer(serializers.Serializer):
    enabled = StrictBooleanField()
    frequency = serializers.ChoiceField(choices=BackupSchedule.Frequency.choices)
    keep = StrictIntegerField(min_value=1, max_value=services.MAX_KEEP)


def _schedule_body(schedule: BackupSchedule | None) -> dict:
    if schedule is None:
        return {"enabled": False, "frequency": "daily", "keep": 7, "next_run": None, "last_run": None,
                "last_error": ""}
    return ScheduleSerializer(schedule).data


def _accepted(operation: Operation, **extra) -> Response:
    body = {"operation": operation.pk, "service": operation.instance_id,
            "state": operation.instance.state, **extra}
    return Response(body, status=status.HTTP_202_ACCEPTED)


NAME_PARAMETER = OpenApiParameter(
    "name", str, OpenApiParameter.PATH, description="The snapshot's name.",
    pattern=services.SNAPSHOT_NAME_PATTERN,
)
BACKUP_PARAMETER = OpenApiParameter(
    "backup_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, OpenApiParameter.PATH,
    description="The backup's id.",
)


def _snapshot_name(name: str) -> str:
    if not services.SNAPSHOT_NAME_RE.match(name):
        raise NotFound("No such snapshot.")
    return name


# --- views ----------------------------------------------------------------------------------

class SnapshotListCreate(ApiView):
    problem_statuses = {"get": (404,), "post": (400, 404, 409, 415, 422)}

    @extend_schema(operation_id="snapshots_list", tags=TAGS, summary="A service's snapshots",
                   responses=SnapshotSerializer(many=True))
    def get(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        return Response(SnapshotSerializer(selectors.snapshots_of(instance), many=True).data)

    @extend_schema(
        operation_id="snapshots_create", tags=TAGS, summary="Take a snapshot",
        description="Kept on the service's host and removed with the service. The plan limits how "
                    "many a service may keep (422 beyond). 409 when the state does not allow it "
                    "(running or stopped only) or another operation is running.",
        request=SnapshotCreateSerializer, responses={202: SnapshotAcceptedSerializer},
    )
    def post(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        data = SnapshotCreateSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        snapshot, operation = services.take_snapshot(
            instance=instance, name=data.validated_data.get("name", ""), actor=self.actor(), source=SOURCE)
        return _accepted(operation, snapshot=SnapshotSerializer(snapshot).data)


class SnapshotDetail(ApiView):
    problem_statuses = {"delete": (404, 409)}

    @extend_schema(operation_id="snapshots_destroy", tags=TAGS, summary="Delete a snapshot",
                   parameters=[NAME_PARAMETER], request=None, responses={202: ActionAcceptedSerializer})
    def delete(self, request, id: int, name: str):
        instance = api_selectors.get_service(request.auth, id)
        operation = services.delete_snapshot(instance=instance, name=_snapshot_name(name),
                                             actor=self.actor(), source=SOURCE)
        return _accepted(operation)


class SnapshotRestore(ApiView):
    problem_statuses = {"post": (404, 409)}

    @extend_schema(
        operation_id="snapshots_restore", tags=TAGS, summary="Roll back to a snapshot",
        description="Replaces the service's disk with the snapshot: everything written since is "
                    "lost. A running service runs again afterwards.",
        parameters=[NAME_PARAMETER], request=None, responses={202: ActionAcceptedSerializer},
    )
    def post(self, request, id: int, name: str):
        instance = api_selectors.get_service(request.auth, id)
        operation = services.restore_snapshot(instance=instance, name=_snapshot_name(name),
                                              actor=self.actor(), source=SOURCE)
        return _accepted(operation)


class BackupListCreate(ApiView):
    problem_statuses = {"get": (404,), "post": (404, 409)}

    @extend_schema(operation_id="backups_list", tags=TAGS, summary="A service's backups, newest first",
                   description="Backups stay after the service is terminated.",
                   responses=BackupSerializer(many=True))
    def get(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        return Response(BackupSerializer(selectors.backups_of(instance), many=True).data)

    @extend_schema(
        operation_id="backups_create", tags=TAGS, summary="Back up now",
        description="A compressed, checksummed archive of the service's disk in the backup target. "
                    "Progress shows on the operation.",
        request=None, responses={202: BackupAcceptedSerializer},
    )
    def post(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        backup, operation = services.start_backup(instance=instance, actor=self.actor(), source=SOURCE)
        return _accepted(operation, backup=BackupSerializer(backup).data)


class BackupDetail(ApiView):
    problem_statuses = {"get": (404,), "delete": (404, 409)}

    @extend_schema(operation_id="backups_retrieve", tags=TAGS, summary="One backup",
                   parameters=[BACKUP_PARAMETER], responses=BackupSerializer)
    def get(self, request, id: int, backup_id: int):
        instance = api_selectors.get_service(request.auth, id)
        return Response(BackupSerializer(selectors.get_backup(instance, backup_id)).data)

    @extend_schema(operation_id="backups_destroy", tags=TAGS, summary="Delete a backup and its archive",
                   parameters=[BACKUP_PARAMETER], request=None, responses={204: None})
    def delete(self, request, id: int, backup_id: int):
        instance = api_selectors.get_service(request.auth, id)
        services.delete_backup(backup=selectors.get_backup(instance, backup_id), actor=self.actor(), source=SOURCE)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BackupRestore(ApiView):
    problem_statuses = {"post": (400, 404, 409, 415, 422)}

    @extend_schema(
        operation_id="backups_restore", tags=TAGS, summary="Restore a backup",
        description="Without a body: into the backed-up service, replacing its disk (everything "
                    "written since is lost). With `new_service`: into a new service. The archive's "
                    "checksum is checked first; a damaged archive fails the operation with the "
                    "service untouched.",
        parameters=[BACKUP_PARAMETER], request=BackupRestoreSerializer,
        responses={202: BackupRestoreAcceptedSerializer},
    )
    def post(self, request, id: int, backup_id: int):
        instance = api_selectors.get_service(request.auth, id)
        data = BackupRestoreSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        backup = selectors.get_backup(instance, backup_id)
        new = data.validated_data.get("new_service")
        if new is None:
            operation = services.restore_backup(backup=backup, actor=self.actor(), source=SOURCE)
            return _accepted(operation, new_service=False)
        created, operation = services.restore_backup_into_new(
            backup=backup, hostname=new["hostname"], plan=new.get("plan"),
            external_id=new.get("external_id"), actor=self.actor(), source=SOURCE)
        return _accepted(operation, new_service=True)


class ScheduleDetail(ApiView):
    problem_statuses = {"get": (404,), "put": (400, 404, 409, 415)}

    @extend_schema(operation_id="backup_schedule_retrieve", tags=TAGS, summary="The backup schedule",
                   responses=ScheduleSerializer)
    def get(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        return Response(_schedule_body(selectors.schedule_of(instance)))

    @extend_schema(
        operation_id="backup_schedule_update", tags=TAGS, summary="Set the backup schedule",
        description="Daily or weekly backups, keeping the newest `keep` of them.",
        request=ScheduleUpdateSerializer, responses=ScheduleSerializer,
    )
    def put(self, request, id: int):
        instance = api_selectors.get_service(request.auth, id)
        data = ScheduleUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = services.set_schedule(instance=instance, actor=self.actor(), source=SOURCE,
                                         **data.validated_data)
        return Response(_schedule_body(schedule))

