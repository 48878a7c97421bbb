"""Snapshots and backups of instances: checked and recorded under the instance's row lock, run
on its host as Operations (``request_action``: one at a time per instance, state machine
checked, queued after commit), and their outcome applied when the host reports it
(``on_operation_finished``, a hook of ``panel/instances/services/results.py``).

- A snapshot lives on the instance's host, next to its disk: removed with the instance.
- A backup is an archive in ``settings.BERTH_BACKUP_TARGET`` (every host mounts it at the same
  path) with its SHA-256 recorded here; the host checks a restore against that record before
  it changes anything. Backups outlive their instance (the customer's safety net) until their
  owner deletes them or a schedule's retention (keep N) removes them.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from panel.audit import services as audit
from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.catalog.models import Plan
from panel.instances.dispatch import celery_app
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.actions import request_action
from panel.instances.services.errors import InvalidOrder, OperationInProgress, QuotaExceeded
from panel.instances.services.ordering import order_instance
from panel.instances.states import InstanceStateError

logger = logging.getLogger(__name__)

A = Operation.Action
S = InstanceState

SNAPSHOT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SNAPSHOT_NAME_RE = re.compile(SNAPSHOT_NAME_PATTERN)
REMOVE_ARCHIVE_TASK = "berth.host.remove_archive"
MAX_KEEP = 100
# A schedule that could not start (the instance busy or in a state that allows no backup) is
# tried again this much later rather than waiting a whole period.
SCHEDULE_RETRY = timedelta(minutes=10)


def _lock(instance: Instance) -> Instance:
    return (Instance.objects.select_for_update(of=("self",)).select_related("host", "plan", "image")
            .get(pk=instance.pk))


# --- snapshots ------------------------------------------------------------------------------

def check_snapshot_name(name) -> str:
    if not isinstance(name, str) or not SNAPSHOT_NAME_RE.match(name):
        raise InvalidOrder({"name": "Use 1-64 characters: lower-case letters, digits, '-' and '_', "
                                    "starting with a letter or digit."})
    return name


def default_snapshot_name(now: datetime | None = None) -> str:
    return f"snap-{(now or timezone.now()):%Y%m%d-%H%M%S}"


def take_snapshot(*, instance: Instance, name: str = "", actor=None,
                  source: str = Operation.Source.UI) -> tuple[Snapshot, Operation]:
    """Queue a snapshot. Raises InvalidOrder (bad or taken name), QuotaExceeded (the plan's
    limit), InstanceStateError or OperationInProgress; nothing is written when it does."""
    name = check_snapshot_name(name or default_snapshot_name())
    with transaction.atomic():
        instance = _lock(instance)
        if instance.snapshots.filter(name=name).exists():
            raise InvalidOrder({"name": f"There is already a snapshot named {name}."})
        limit = instance.plan.max_snapshots
        count = instance.snapshots.count()
        if count >= limit:
            raise QuotaExceeded(
                f"The plan {instance.plan.name} allows {limit} snapshot{'s' if limit != 1 else ''}"
                f" and this instance has {count}; delete one first." if limit else
                f"The plan {instance.plan.name} does not include snapshots.")
        operation = request_action(instance=instance, action=A.SNAPSHOT, actor=actor, source=source,
                                   params={"snapshot": name})
        snapshot = Snapshot.objects.create(instance=instance, name=name, operation=operation)
    return snapshot, operation


def get_snapshot(instance: Instance, name: str) -> Snapshot:
    snapshot = instance.snapshots.filter(name=name).first() if isinstance(name, str) else None
    if snapshot is None:
        raise Http404("No such snapshot.")
    return snapshot


def restore_snapshot(*, instance: Instance, name: str, actor=None,
                     source: str = Operation.Source.UI) -> Operation:
    """Roll the instance back to the snapshot: what was written since is lost."""
    with transaction.atomic():
        instance = _lock(instance)
        snapshot = get_snapshot(instance, name)
        if snapshot.state != Snapshot.State.READY:
            raise OperationInProgress(f"The snapshot {name} is {snapshot.get_state_display().lower()}.")
        return request_action(instance=instance, action=A.RESTORE_SNAPSHOT, actor=actor, source=source,
                              params={"snapshot": name},
                              reason=f"Restore of snapshot {name} requested (newer data is lost).")


def delete_snapshot(*, instance: Instance, name: str, actor=None,
                    source: str = Operation.Source.UI) -> Operation:
    with transaction.atomic():
        instance = _lock(instance)
        snapshot = get_snapshot(instance, name)
        if snapshot.state == Snapshot.State.DELETING:
            raise OperationInProgress(f"The snapshot {name} is already being deleted.")
        operation = request_action(instance=instance, action=A.DELETE_SNAPSHOT, actor=actor, source=source,
                                   params={"snapshot": name})
        snapshot.state = Snapshot.State.DELETING
        snapshot.save(update_fields=["state"])
    return operation


# --- backups --------------------------------------------------------------------------------

def start_backup(*, instance: Instance, actor=None, source: str = Operation.Source.UI,
                 kind: str = Backup.Kind.MANUAL) -> tuple[Backup, Operation]:
    """Queue a backup to the backup target. Raises InstanceStateError or OperationInProgress."""
    with transaction.atomic():
        instance = _lock(instance)
        backup = Backup.objects.create(instance=instance, kind=kind, image=instance.image,
                                       disk_gib=instance.plan.disk_gib, host=instance.host)
        backup.archive_name = f"backup-{backup.pk}-{timezone.now():%Y%m%d-%H%M%S}"
        operation = request_action(
            instance=instance, action=A.BACKUP, actor=actor, source=source,
            params={"target": str(settings.BERTH_BACKUP_TARGET), "archive": backup.archive_name,
                    "backup": backup.pk},
            reason=f"{backup.get_kind_display()} backup requested.",
        )
        backup.operation = operation
        backup.save(update_fields=["archive_name", "operation"])
    return backup, operation


def _restore_params(backup: Backup, instance: Instance) -> dict:
    if backup.state != Backup.State.READY or not backup.sha256:
        raise InvalidOrder({"backup": "This backup did not complete; it cannot be restored."})
    if instance.kind != backup.instance.kind:
        raise InvalidOrder({"backup": f"This is a backup of a {backup.instance.get_kind_display().lower()}."})
    if instance.image.name != backup.image.name:
        raise InvalidOrder({"backup": f"This backup was made over the image {backup.image.name}; "
                                      f"{instance.hostname} runs {instance.image.name}."})
    return {"path": backup.path, "sha256": backup.sha256, "backup": backup.pk,
            "start": instance.state == S.RUNNING}


def restore_backup(*, backup: Backup, actor=None, source: str = Operation.Source.UI) -> Operation:
    """Replace the backed-up instance's disk with the backup's (what was written since is lost).
    The host checks the archive's checksum first: a damaged archive changes nothing."""
    with transaction.atomic():
        instance = _lock(backup.instance)
        params = _restore_params(backup, instance)
        return request_action(instance=instance, action=A.RESTORE_BACKUP, actor=actor, source=source,
                              params=params, reason=f"Restore of backup #{backup.pk} requested.")


def restore_backup_into_new(*, backup: Backup, hostname: str, plan: Plan | None = None, actor=None,
                            source: str = Operation.Source.UI,
                            external_id: str | None = None) -> tuple[Instance, Operation]:
    """Order a new instance (same customer, kind and image; the backup's plan unless another
    is given) through the ordering service, then restore the backup into it once it is created
    (``on_operation_finished``). Returns the new instance and its create operation."""
    source_instance = backup.instance
    if backup.state != Backup.State.READY or not backup.sha256:
        raise InvalidOrder({"backup": "This backup did not complete; it cannot be restored."})
    plan = plan or source_instance.plan
    if plan.kind != source_instance.kind:
        raise InvalidOrder({"plan": f"This plan is for {plan.get_kind_display().lower()}s; the backup is of a "
                                    f"{source_instance.get_kind_display().lower()}."})
    if plan.disk_gib < backup.disk_gib:
        raise InvalidOrder({"plan": f"The backup holds a {backup.disk_gib} GiB disk; this plan has "
                                    f"{plan.disk_gib} GiB."})
    if external_id is not None and Instance.objects.filter(external_id=external_id).exists():
        raise InvalidOrder({"external_id": "This external_id already belongs to another service."})
    try:
        return _order_for_restore(backup, source_instance, plan=plan, hostname=hostname, actor=actor,
                                  source=source, external_id=external_id)
    except IntegrityError:  # the same external_id ordered meanwhile
        raise InvalidOrder({"external_id": "This external_id already belongs to another service."}) from None


def _order_for_restore(backup: Backup, source_instance: Instance, *, plan: Plan, hostname: str, actor,
                       source: str, external_id: str | None) -> tuple[Instance, Operation]:
    with transaction.atomic():
        instance = order_instance(
            customer=source_instance.customer, plan=plan, image=backup.image, hostname=hostname,
            actor=actor, source=source, external_id=external_id,
            ssh_keys=source_instance.ssh_keys, root_password_hash=source_instance.root_password_hash,
            command=source_instance.app_command, env=source_instance.app_env or None,
        )
        create = instance.operations.get(action=A.CREATE)
        create.params = {**create.params, "restore_backup": backup.pk}
        create.save(update_fields=["params"])
        audit.record(action="backup.restore_new", source=source, actor=actor, target=instance,
                     message=f"Ordered to restore backup #{backup.pk} of {source_instance.hostname}.",
                     data={"backup": backup.pk, "from": source_instance.pk})
    return instance, create


def _archive_host(backup: Backup):
    from panel.hosts.models import Host  # noqa: PLC0415

    for host in (backup.host, backup.instance.host):
        if host is not None:
            return host
    return Host.objects.filter(is_enabled=True).order_by("pk").first()


def _remove_archive_later(backup: Backup) -> None:
    """Ask a host to remove the archive (every host mounts the target) once this commits."""
    if not backup.path:
        return
    host = _archive_host(backup)
    if host is None:
        logger.warning("no host to remove %s", backup.path)
        return
    path, queue = backup.path, host.queue
    transaction.on_commit(lambda: celery_app.send_task(REMOVE_ARCHIVE_TASK, kwargs={"path": path}, queue=queue))


def delete_backup(*, backup: Backup, actor=None, source: str = Operation.Source.UI) -> None:
    """Remove a backup and its archive. Refused while it is being written or restored."""
    with transaction.atomic():
        instance = _lock(backup.instance)
        backup = Backup.objects.select_for_update().get(pk=backup.pk)
        busy = instance.operations.filter(
            state__in=(Operation.State.QUEUED, Operation.State.RUNNING),
            action__in=(A.BACKUP, A.RESTORE_BACKUP), params__backup=backup.pk).exists()
        if busy or backup.state == Backup.State.CREATING and backup.operation_id and not backup.operation.is_finished:
            raise OperationInProgress("The backup is being written or restored; try again when that has finished.")
        _remove_archive_later(backup)
        audit.record(action="backup.delete", source=source, actor=actor, target=instance,
                     message=f"Backup #{backup.pk} deleted.", data={"backup": backup.pk, "path": backup.path})
        backup.delete()


def prune(instance: Instance, keep: int) -> list[int]:
    """Scheduled backups beyond the newest ``keep`` ready ones go (manual ones stay), and so do
    failed scheduled attempts older than the newest ready one."""
    scheduled = list(instance.backups.filter(kind=Backup.Kind.SCHEDULED)
                     .exclude(state=Backup.State.CREATING).order_by("-created_at", "-id"))
    ready = [b for b in scheduled if b.state == Backup.State.READY]
    victims = ready[keep:]
    if ready:
        victims += [b for b in scheduled if b.state == Backup.State.FAILED and b.created_at < ready[0].created_at]
    for backup in victims:
        _remove_archive_later(backup)
        backup.delete()
    if victims:
        audit.record(action="backup.prune", source=Operation.Source.SYSTEM, target=instance,
                     message=f"Removed {len(victims)} scheduled backup(s) beyond the {keep} kept.",
                     data={"backups": [b.pk for b in victims]})
    return [b.pk for b in victims]


# --- schedules ------------------------------------------------------------------------------

def set_schedule(*, instance: Instance, enabled: bool, frequency: str, keep: int, actor=None,
                 source: str = Operation.Source.UI, now: datetime | None = None) -> BackupSchedule:
    if frequency not in BackupSchedule.Frequency.values:
        raise InvalidOrder({"frequency": "Choose daily or weekly."})
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP:
        raise InvalidOrder({"keep": f"Keep between 1 and {MAX_KEEP} backups."})
    now = now or timezone.now()
    with transaction.atomic():
        instance = _lock(instance)
        if instance.state in (S.TERMINATING, S.TERMINATED):
            raise InstanceStateError(instance, f"Cannot schedule backups of an instance that is {instance.state}.")
        schedule = BackupSchedule.objects.select_for_update().filter(instance=instance).first()
        if schedule is None:
            schedule = BackupSchedule(instance=instance, next_run=now + BackupSchedule.PERIODS[frequency])
        elif schedule.frequency != frequency or (enabled and not schedule.enabled):
            schedule.next_run = now + BackupSchedule.PERIODS[frequency]
        schedule.enabled, schedule.frequency, schedule.keep = enabled, frequency, keep
        schedule.save()
        audit.record(action="backup.schedule", source=source, actor=actor, target=instance,
                     message=(f"Backups {frequency}, keeping {keep}." if enabled else "Scheduled backups off."),
                     data={"enabled": enabled, "frequency": frequency, "keep": keep})
    return schedule


def run_due_schedules(*, now: datetime | None = None) -> list[int]:
    """Start the backups that are due (beat, every minute); returns the backups started."""
    now = now or timezone.now()
    started = []
    due = (BackupSchedule.objects.filter(enabled=True, next_run__lte=now)
           .exclude(instance__state=S.TERMINATED).values_list("pk", flat=True))
    for pk in list(due):
        with transaction.atomic():
            schedule = (BackupSchedule.objects.select_for_update(skip_locked=True)
                        .filter(pk=pk, enabled=True, next_run__lte=now).select_related("instance").first())
            if schedule is None:
                continue
            try:
                with transaction.atomic():
                    backup, _ = start_backup(instance=schedule.instance, source=Operation.Source.SYSTEM,
                                             kind=Backup.Kind.SCHEDULED)
            except (InstanceStateError, OperationInProgress) as exc:
                schedule.last_error = str(exc)[:500]
                schedule.next_run = now + SCHEDULE_RETRY
            else:
                started.append(backup.pk)
                schedule.last_error = ""
                schedule.last_run = now
                while schedule.next_run <= now:
                    schedule.next_run += schedule.period
            schedule.save(update_fields=["last_error", "last_run", "next_run", "updated_at"])
    return started


# --- outcomes -------------------------------------------------------------------------------

def on_operation_finished(operation: Operation, instance: Instance, *, ok: bool, result: dict) -> None:
    """Apply a snapshot's or backup's outcome (in record_operation_finished's transaction)."""
    action = operation.action
    params = operation.params or {}
    if action == A.SNAPSHOT:
        snapshot = Snapshot.objects.filter(operation=operation).first()
        if snapshot is None:
            return
        if ok:
            snapshot.state = Snapshot.State.READY
            snapshot.size_bytes = max(int(result.get("size_bytes") or 0), 0)
            snapshot.with_memory = bool(result.get("with_memory"))
            snapshot.save(update_fields=["state", "size_bytes", "with_memory"])
        else:
            snapshot.delete()  # the host leaves no half-taken snapshot behind
    elif action == A.DELETE_SNAPSHOT:
        snapshots = Snapshot.objects.filter(instance=instance, name=params.get("snapshot"))
        if ok:
            snapshots.delete()
        else:
            snapshots.update(state=Snapshot.State.READY)
    elif action == A.BACKUP:
        backup = Backup.objects.filter(pk=params.get("backup"), instance=instance).first()
        if backup is None:
            return
        backup.finished_at = timezone.now()
        if ok and result.get("sha256"):
            backup.state = Backup.State.READY
            backup.path = str(result.get("path") or "")
            backup.size_bytes = max(int(result.get("size_bytes") or 0), 0)
            backup.sha256 = str(result["sha256"])
        else:
            backup.state = Backup.State.FAILED
            backup.error = operation.error or "The host reported no archive."
        backup.save()
        if backup.kind == Backup.Kind.SCHEDULED and backup.state == Backup.State.READY:
            schedule = BackupSchedule.objects.filter(instance=instance).first()
            if schedule is not None:
                prune(instance, schedule.keep)
    elif action == A.TERMINATE and ok:
        # Snapshots lived on the host with the instance; backups stay (the safety net).
        Snapshot.objects.filter(instance=instance).delete()
        BackupSchedule.objects.filter(instance=instance).delete()
    elif action == A.MOVE and ok:
        # A move copies the disk, not its snapshots, and the source's copy is destroyed. (Moves
        # finish in panel/instances/services/moves.py, which must call FINISHED_HOOKS for this.)
        Snapshot.objects.filter(instance=instance).delete()
    elif action == A.CREATE and ok and params.get("restore_backup"):
        _restore_after_create(operation, params["restore_backup"])


def _restore_after_create(create: Operation, backup_id: int) -> None:
    backup = Backup.objects.select_related("instance", "image").filter(pk=backup_id).first()
    instance = Instance.objects.select_related("image", "host", "plan").get(pk=create.instance_id)
    try:
        if backup is None:
            raise InvalidOrder({"backup": "The backup was deleted before it could be restored."})
        with transaction.atomic():
            params = _restore_params(backup, instance)
            request_action(instance=instance, action=A.RESTORE_BACKUP, source=Operation.Source.SYSTEM,
                           params=params, reason=f"Restore of backup #{backup.pk} into the new instance.")
    except (InvalidOrder, InstanceStateError, OperationInProgress) as exc:
        detail = " ".join(exc.errors.values()) if isinstance(exc, InvalidOrder) else str(exc)
        logger.warning("restore of backup %s into %s not started: %s", backup_id, instance.pk, detail)
        audit.record(action="backup.restore_new.failed", source=Operation.Source.SYSTEM, target=instance,
                     message=f"The backup could not be restored: {detail}", data={"backup": backup_id})
