"""The "Snapshots & backups" tab of an instance's page: its part (re-rendered when events say
it changed) and its actions. The page's script posts for JSON and asks for confirmations in a
dialog; without script, restores and deletions show a confirmation page first."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from panel.backups import selectors, services
from panel.backups.models import BackupSchedule
from panel.instances.models import Instance, Operation
from panel.instances.selectors import get_visible_instance
from panel.instances.services.actions import active_operation
from panel.instances.services.errors import (
    CapacityError,
    InvalidOrder,
    OperationInProgress,
    QuotaExceeded,
)
from panel.instances.states import InstanceStateError
from panel.web.views import _refusal, _wants_json

UI = Operation.Source.UI


def panel_context(instance: Instance, user) -> dict:
    busy = active_operation(instance)
    snapshots = list(selectors.snapshots_of(instance))
    return {
        "instance": instance,
        "snapshots": snapshots,
        "backups": list(selectors.backups_of(instance)),
        "schedule": selectors.schedule_of(instance),
        "frequencies": BackupSchedule.Frequency.choices,
        "busy": busy,
        "refusal": _refusal(instance, user),
        "snapshot_room": instance.plan.max_snapshots - len(snapshots),
        "can_snapshot": busy is None and instance.state in ("running", "stopped"),
        "can_restore": busy is None and instance.state in ("running", "stopped", "error"),
        "live": instance.state not in ("terminating", "terminated"),
        "default_name": services.default_snapshot_name(),
    }


@login_required
@require_GET
def backups_part(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    return render(request, "backups/_panel.html", panel_context(instance, request.user))


def _page(instance: Instance) -> str:
    return reverse("instance-detail", args=[instance.pk]) + "#tab-backups"


def _answer(request: HttpRequest, instance: Instance, *, status: int, detail: str,
            errors: dict | None = None, redirect_to: str = "") -> HttpResponse:
    if _wants_json(request):
        body = {"detail": detail, **({"errors": errors} if errors else {}),
                **({"redirect": redirect_to} if redirect_to else {})}
        return JsonResponse(body, status=status)
    messages.add_message(request, messages.SUCCESS if status < 300 else messages.WARNING, detail)
    return redirect(redirect_to or _page(instance))


def _run(request: HttpRequest, instance: Instance, call, *, done: str) -> HttpResponse:
    """Run a service call and answer: 202 with the operation, or the refusal's reason."""
    refusal = _refusal(instance, request.user)
    if refusal:
        return _answer(request, instance, status=409, detail=refusal)
    try:
        outcome = call()
    except InvalidOrder as exc:
        return _answer(request, instance, status=400, detail=" ".join(exc.errors.values()),
                       errors={k: [v] for k, v in exc.errors.items()})
    except (InstanceStateError, OperationInProgress) as exc:
        return _answer(request, instance, status=409, detail=f"{exc} The page shows the current state.")
    except (QuotaExceeded, CapacityError) as exc:
        return _answer(request, instance, status=409, detail=str(exc))
    if isinstance(outcome, tuple) and isinstance(outcome[0], Instance):  # restored into a new one
        new, operation = outcome
        url = reverse("instance-detail", args=[new.pk])
        if _wants_json(request):
            return JsonResponse({"operation": operation.pk, "detail": done, "redirect": url}, status=202)
        messages.success(request, done)
        return redirect(url)
    operation = outcome[1] if isinstance(outcome, tuple) else outcome
    if _wants_json(request):
        if operation is None:  # done at once (a schedule saved, a backup deleted)
            return JsonResponse({"detail": done}, status=200)
        return JsonResponse({"operation": operation.pk, "detail": done}, status=202)
    messages.success(request, done)
    return redirect(_page(instance))


def _confirm(request: HttpRequest, instance: Instance, *, title: str, text: str, button: str) -> HttpResponse:
    """The confirmation page (without script; the script asks in a dialog and posts confirm=yes)."""
    return render(request, "backups/confirm.html", {
        "instance": instance, "title": title, "text": text, "button": button, "action": request.path,
    })


def _find(request: HttpRequest, instance: Instance, lookup):
    """The snapshot or backup, or None when it is gone (a stale page): a GET is then sent back
    to the tab with a note, a POST answers 404."""
    try:
        return lookup()
    except Http404:
        if request.method == "POST":
            raise
        messages.warning(request, "That snapshot or backup no longer exists.")
        return None


def _confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("confirm") == "yes"


@login_required
@require_POST
def snapshot_take(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    name = request.POST.get("name", "").strip()
    return _run(request, instance, lambda: services.take_snapshot(
        instance=instance, name=name, actor=request.user, source=UI), done="Snapshot requested.")


@login_required
def snapshot_restore(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    if _find(request, instance, lambda: services.get_snapshot(instance, name)) is None:
        return redirect(_page(instance))
    if not _confirmed(request):
        return _confirm(request, instance, title=f"Restore snapshot {name}?",
                        text=f"Restoring replaces everything on {instance.hostname}'s disk with the snapshot "
                             f"{name}: whatever was written since it was taken is lost.",
                        button=f"Restore {name}")
    return _run(request, instance, lambda: services.restore_snapshot(
        instance=instance, name=name, actor=request.user, source=UI), done=f"Restore of {name} requested.")


@login_required
def snapshot_delete(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    if _find(request, instance, lambda: services.get_snapshot(instance, name)) is None:
        return redirect(_page(instance))
    if not _confirmed(request):
        return _confirm(request, instance, title=f"Delete snapshot {name}?",
                        text=f"The snapshot {name} is deleted; {instance.hostname} itself is not changed.",
                        button=f"Delete {name}")
    return _run(request, instance, lambda: services.delete_snapshot(
        instance=instance, name=name, actor=request.user, source=UI), done=f"Deletion of {name} requested.")


@login_required
@require_POST
def backup_take(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    return _run(request, instance, lambda: services.start_backup(
        instance=instance, actor=request.user, source=UI), done="Backup requested.")


@login_required
def backup_restore(request: HttpRequest, pk: int, backup_id: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    backup = _find(request, instance, lambda: selectors.get_backup(instance, backup_id))
    if backup is None:
        return redirect(_page(instance))
    if not _confirmed(request):
        return _confirm(request, instance, title=f"Restore backup #{backup.pk}?",
                        text=f"Restoring replaces everything on {instance.hostname}'s disk with this backup "
                             f"of {backup.created_at:%d %b %Y %H:%M} UTC: whatever was written since is lost.",
                        button="Restore the backup")
    return _run(request, instance, lambda: services.restore_backup(
        backup=backup, actor=request.user, source=UI), done=f"Restore of backup #{backup.pk} requested.")


@login_required
@require_POST
def backup_restore_new(request: HttpRequest, pk: int, backup_id: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    backup = selectors.get_backup(instance, backup_id)
    hostname = request.POST.get("hostname", "").strip()
    return _run(request, instance, lambda: services.restore_backup_into_new(
        backup=backup, hostname=hostname, actor=request.user, source=UI),
        done=f"A new instance was ordered; backup #{backup.pk} is restored into it once it is created.")


@login_required
def backup_delete(request: HttpRequest, pk: int, backup_id: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    backup = _find(request, instance, lambda: selectors.get_backup(instance, backup_id))
    if backup is None:
        return redirect(_page(instance))
    if not _confirmed(request):
        return _confirm(request, instance, title=f"Delete backup #{backup.pk}?",
                        text="The archive is removed from the backup target; it cannot be restored afterwards.",
                        button="Delete the backup")

    def delete():
        services.delete_backup(backup=backup, actor=request.user, source=UI)

    return _run(request, instance, delete, done=f"Backup #{backup.pk} deleted.")


@login_required
@require_POST
def schedule_update(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    raw_keep = request.POST.get("keep", "")
    keep = int(raw_keep) if raw_keep.isascii() and raw_keep.isdigit() and len(raw_keep) < 4 else -1
    enabled = request.POST.get("enabled") in ("on", "yes", "true")
    frequency = request.POST.get("frequency", "")

    def save():
        services.set_schedule(instance=instance, enabled=enabled, frequency=frequency, keep=keep,
                              actor=request.user, source=UI)

    return _run(request, instance, save, done="Schedule saved." if enabled else "Scheduled backups are off.")
