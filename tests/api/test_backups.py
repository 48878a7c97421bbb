"""Snapshots, backups and backup schedules through the API and their services (panel/backups):
202 with an operation to follow, the task sent to the instance's host with the params the host
side reads (workers/backups.py), the host's outcome recorded, and every refusal a problem+json
with nothing half-created."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.backups import services
from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services import results
from tests.factories import ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db
S = InstanceState
A = Operation.Action


@pytest.fixture(autouse=True)
def _commit_is_now(monkeypatch):
    """Tasks go to hosts after commit; these tests run in one transaction: send them at once."""
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())


def host_tasks(sent_tasks, name="berth.host.run_operation"):
    return [t for t in sent_tasks if t["name"] == name]


def report(operation, *, ok=True, power_state="running", error="", result=None):
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=ok, power_state=power_state, error=error,
                                      result=result)
    operation.refresh_from_db()
    return operation


def problem(response, status, slug):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:berth:problem:{slug}"
    return response.json()


def backup_done(api, running, sent_tasks, *, sha="ab" * 32, size=1234):
    response = api.post(f"/api/v1/services/{running.pk}/backups/", format="json")
    assert response.status_code == 202, response.content
    operation = Operation.objects.get(pk=response.json()["operation"])
    params = operation.params
    report(operation, result={"path": f"{params['target']}/{running.uuid.hex}/{params['archive']}.tar.zst",
                              "size_bytes": size, "sha256": sha, "copy_seconds": 0.1})
    return Backup.objects.get(pk=response.json()["backup"]["id"])


# --- snapshots ------------------------------------------------------------------------------

def test_take_list_restore_and_delete_a_snapshot(customer_api, running, sent_tasks):
    url = f"/api/v1/services/{running.pk}/snapshots/"
    response = customer_api.post(url, {"name": "before-upgrade"}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["service"] == running.pk and body["snapshot"]["state"] == "creating"
    take = Operation.objects.get(pk=body["operation"])
    assert (take.action, take.source, take.params) == (A.SNAPSHOT, "api", {"snapshot": "before-upgrade"})
    sent = host_tasks(sent_tasks)[-1]
    assert sent["queue"] == running.host.queue
    assert sent["kwargs"]["action"] == "snapshot" and sent["kwargs"]["params"] == {"snapshot": "before-upgrade"}
    assert customer_api.get(f"/api/v1/operations/{take.pk}/").json()["state"] == "queued"

    report(take, result={"snapshot": "before-upgrade", "size_bytes": 4096, "with_memory": False})
    listed = customer_api.get(url).json()
    assert [(s["name"], s["state"], s["size_bytes"]) for s in listed] == [("before-upgrade", "ready", 4096)]

    restore = customer_api.post(f"{url}before-upgrade/restore/", format="json")
    assert restore.status_code == 202, restore.content
    op = Operation.objects.get(pk=restore.json()["operation"])
    assert (op.action, op.params) == (A.RESTORE_SNAPSHOT, {"snapshot": "before-upgrade"})
    report(op, power_state="running")
    running.refresh_from_db()
    assert running.state == S.RUNNING

    delete = customer_api.delete(f"{url}before-upgrade/")
    assert delete.status_code == 202, delete.content
    op = Operation.objects.get(pk=delete.json()["operation"])
    assert op.action == A.DELETE_SNAPSHOT
    assert customer_api.get(url).json()[0]["state"] == "deleting"
    report(op)
    assert customer_api.get(url).json() == []


def test_a_failed_snapshot_leaves_no_row_and_a_failed_delete_keeps_it(api, running, sent_tasks):
    url = f"/api/v1/services/{running.pk}/snapshots/"
    failed = Operation.objects.get(pk=api.post(url, {"name": "one"}, format="json").json()["operation"])
    report(failed, ok=False, error="not enough space on the host for a copy of the disk")
    assert not Snapshot.objects.exists()
    take = Operation.objects.get(pk=api.post(url, {"name": "one"}, format="json").json()["operation"])
    report(take, result={"snapshot": "one", "size_bytes": 1})
    delete = Operation.objects.get(pk=api.delete(f"{url}one/").json()["operation"])
    report(delete, ok=False, error="boom")
    assert Snapshot.objects.get().state == Snapshot.State.READY


def test_snapshot_names_limits_and_states_are_checked(api, running, sent_tasks):
    url = f"/api/v1/services/{running.pk}/snapshots/"
    for bad in ("Upper", "-dash", "a" * 65, "with space", 5):
        body = problem(api.post(url, {"name": bad}, format="json"), 400, "validation-error")
        assert "name" in body["errors"]
    running.plan.max_snapshots = 1
    running.plan.save()
    report(Operation.objects.get(pk=api.post(url, {"name": "a"}, format="json").json()["operation"]))
    problem(api.post(url, {"name": "a"}, format="json"), 400, "validation-error")  # same name
    body = problem(api.post(url, {"name": "b"}, format="json"), 422, "quota-exceeded")
    assert "allows 1 snapshot" in body["detail"]
    assert Snapshot.objects.count() == 1
    running.plan.max_snapshots = 5
    running.plan.save()
    stop = Operation.objects.get(pk=api.post(f"/api/v1/services/{running.pk}/stop", format="json").json()["operation"])
    # One operation at a time: nothing is written for the refused snapshot.
    problem(api.post(url, {"name": "b"}, format="json"), 409, "operation-in-progress")
    assert Snapshot.objects.count() == 1
    report(stop, power_state="stopped")
    api.post(f"/api/v1/services/{running.pk}/suspend", format="json")
    report(running.operations.get(action=A.SUSPEND), power_state="stopped")
    body = problem(api.post(url, {"name": "b"}, format="json"), 409, "invalid-state")
    assert body["state"] == "suspended"
    problem(api.post(f"{url}nope/restore/", format="json"), 404, "not-found")
    problem(api.post(f"{url}NOT_VALID/restore/", format="json"), 404, "not-found")
    problem(api.delete(f"{url}nope/"), 404, "not-found")


def test_another_customers_service_is_404(stranger_api, running, sent_tasks):
    for method, path in (("get", "snapshots/"), ("post", "snapshots/"), ("get", "backups/"),
                         ("post", "backups/"), ("get", "backup-schedule/"), ("post", "snapshots/x/restore/"),
                         ("delete", "snapshots/x/"), ("post", "backups/1/restore/")):
        response = getattr(stranger_api, method)(f"/api/v1/services/{running.pk}/{path}", format="json")
        problem(response, 404, "not-found")
    problem(stranger_api.put(f"/api/v1/services/{running.pk}/backup-schedule/",
                             {"enabled": True, "frequency": "daily", "keep": 2}, format="json"), 404, "not-found")
    assert not Operation.objects.exclude(action=A.CREATE).exists()


def test_terminating_removes_snapshots_and_the_schedule_but_keeps_backups(api, running, sent_tasks):
    take = Operation.objects.get(pk=api.post(f"/api/v1/services/{running.pk}/snapshots/", {"name": "s"},
                                             format="json").json()["operation"])
    report(take, result={"snapshot": "s", "size_bytes": 1})
    backup = backup_done(api, running, sent_tasks)
    services.set_schedule(instance=running, enabled=True, frequency="daily", keep=2)
    terminate = Operation.objects.get(pk=api.post(f"/api/v1/services/{running.pk}/terminate",
                                                  format="json").json()["operation"])
    report(terminate, power_state="absent")
    assert not Snapshot.objects.exists() and not BackupSchedule.objects.exists()
    assert [b["id"] for b in api.get(f"/api/v1/services/{running.pk}/backups/").json()] == [backup.pk]


# --- backups --------------------------------------------------------------------------------

def test_backup_records_the_archive_and_restores_into_the_same_service(customer_api, running, sent_tasks):
    response = customer_api.post(f"/api/v1/services/{running.pk}/backups/", format="json")
    assert response.status_code == 202, response.content
    assert response.json()["backup"]["state"] == "creating"
    operation = Operation.objects.get(pk=response.json()["operation"])
    params = host_tasks(sent_tasks)[-1]["kwargs"]["params"]
    assert params["target"] == str(settings.BERTH_BACKUP_TARGET)
    assert params["archive"].startswith(f"backup-{response.json()['backup']['id']}-")
    path = f"{params['target']}/{running.uuid.hex}/{params['archive']}.tar.zst"
    results.record_operation_progress(operation.pk, progress="Writing the archive: 42 %")
    assert customer_api.get(f"/api/v1/operations/{operation.pk}/").json()["progress"].endswith("42 %")
    report(operation, result={"path": path, "size_bytes": 999, "sha256": "cd" * 32})
    backup = Backup.objects.get()
    assert (backup.state, backup.path, backup.size_bytes, backup.sha256) == ("ready", path, 999, "cd" * 32)
    listed = customer_api.get(f"/api/v1/services/{running.pk}/backups/").json()
    assert listed[0]["sha256"] == "cd" * 32 and listed[0]["kind"] == "manual" and "path" not in listed[0]

    restore = customer_api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/", format="json")
    assert restore.status_code == 202, restore.content
    assert restore.json()["new_service"] is False
    op = Operation.objects.get(pk=restore.json()["operation"])
    assert op.action == A.RESTORE_BACKUP
    assert host_tasks(sent_tasks)[-1]["kwargs"]["params"] == {
        "path": path, "sha256": "cd" * 32, "backup": backup.pk, "start": True}


def test_a_restore_the_host_refuses_fails_the_operation_and_leaves_the_service_as_it_was(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    op = Operation.objects.get(pk=api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/",
                                           format="json").json()["operation"])
    report(op, ok=False, power_state="running",
           error="the archive x.tar.zst is damaged or incomplete (…); nothing was changed")
    running.refresh_from_db()
    assert running.state == S.RUNNING
    assert "damaged" in api.get(f"/api/v1/operations/{op.pk}/").json()["error"]
    assert Backup.objects.get().state == Backup.State.READY


def test_a_failed_backup_is_kept_as_failed_and_cannot_be_restored(api, running, sent_tasks):
    op = Operation.objects.get(pk=api.post(f"/api/v1/services/{running.pk}/backups/", format="json").json()["operation"])
    report(op, ok=False, error="cannot write the archive: the backup target is full")
    backup = Backup.objects.get()
    assert backup.state == "failed" and "full" in backup.error
    body = problem(api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/", format="json"),
                   400, "validation-error")
    assert "backup" in body["errors"]
    problem(api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk + 1000}/restore/", format="json"),
            404, "not-found")


def test_restore_into_a_new_service_orders_it_then_restores_once_it_is_created(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    url = f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/"
    problem(api.post(url, {"new_service": {"hostname": "-bad"}}, format="json"), 400, "validation-error")
    small = PlanFactory(vcpus=1, memory_mib=256, disk_gib=0)
    body = problem(api.post(url, {"new_service": {"hostname": "copy", "plan": small.pk}}, format="json"),
                   400, "validation-error")
    assert "plan" in body["errors"]
    assert Instance.objects.count() == 1

    response = api.post(url, {"new_service": {"hostname": "copy", "external_id": "svc-copy"}}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["new_service"] is True and body["service"] != running.pk
    new = Instance.objects.get(pk=body["service"])
    assert (new.customer_id, new.plan_id, new.image_id, new.external_id) == (
        running.customer_id, running.plan_id, running.image_id, "svc-copy")
    create = Operation.objects.get(pk=body["operation"])
    assert create.action == A.CREATE and create.instance_id == new.pk
    assert host_tasks(sent_tasks)[-1]["kwargs"]["action"] == "create"

    report(create, power_state="running")
    restore = new.operations.get(action=A.RESTORE_BACKUP)
    assert (restore.source, restore.state) == ("system", "queued")
    sent = host_tasks(sent_tasks)[-1]
    assert sent["queue"] == new.host.queue and sent["kwargs"]["operation_id"] == restore.pk
    assert sent["kwargs"]["params"] == {"path": backup.path, "sha256": backup.sha256, "backup": backup.pk,
                                        "start": True}
    assert sent["kwargs"]["spec"]["uuid"] == new.uuid.hex


def test_restore_into_a_new_service_respects_the_quota(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    running.customer.max_instances = 1
    running.customer.save()
    problem(api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/",
                     {"new_service": {"hostname": "copy"}}, format="json"), 422, "quota-exceeded")
    assert Instance.objects.count() == 1


def test_a_backup_of_another_image_is_refused(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    backup.image = ImageFactory(name="other")
    backup.save()
    body = problem(api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/", format="json"),
                   400, "validation-error")
    assert "other" in body["errors"]["backup"][0]


def test_deleting_a_backup_asks_a_host_to_remove_its_archive(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    response = api.delete(f"/api/v1/services/{running.pk}/backups/{backup.pk}/")
    assert response.status_code == 204, response.content
    assert not Backup.objects.exists()
    removal = host_tasks(sent_tasks, "berth.host.remove_archive")
    assert removal == [{"name": "berth.host.remove_archive", "kwargs": {"path": backup.path},
                        "queue": running.host.queue}]


# --- schedules ------------------------------------------------------------------------------

def test_schedule_get_put_and_validation(customer_api, running, sent_tasks):
    url = f"/api/v1/services/{running.pk}/backup-schedule/"
    assert customer_api.get(url).json()["enabled"] is False
    response = customer_api.put(url, {"enabled": True, "frequency": "weekly", "keep": 3}, format="json")
    assert response.status_code == 200, response.content
    body = customer_api.get(url).json()
    assert (body["enabled"], body["frequency"], body["keep"]) == (True, "weekly", 3)
    assert body["next_run"] is not None
    for bad in ({"enabled": "yes", "frequency": "daily", "keep": 1}, {"enabled": True, "frequency": "hourly", "keep": 1},
                {"enabled": True, "frequency": "daily", "keep": 0}, {"enabled": True, "frequency": "daily", "keep": "2"}):
        problem(customer_api.put(url, bad, format="json"), 400, "validation-error")
    assert BackupSchedule.objects.get().frequency == "weekly"


def test_due_schedules_start_backups_and_retention_prunes_beyond_keep(running, sent_tasks):
    now = timezone.now()
    schedule = services.set_schedule(instance=running, enabled=True, frequency="daily", keep=2, now=now)
    manual, _ = services.start_backup(instance=running)
    report(manual.operation, result={"path": "/b/x/manual.tar.zst", "size_bytes": 1, "sha256": "aa" * 32})
    assert services.run_due_schedules(now=now) == []  # not due yet
    made = []
    for day in range(1, 5):
        when = now + timedelta(days=day, seconds=1)
        started = services.run_due_schedules(now=when)
        assert len(started) == 1
        backup = Backup.objects.get(pk=started[0])
        assert backup.kind == "scheduled" and backup.operation.source == "system"
        report(backup.operation, result={"path": f"/b/x/s{day}.tar.zst", "size_bytes": 1, "sha256": "bb" * 32})
        made.append(backup.pk)
        schedule.refresh_from_db()
        assert schedule.next_run > when and schedule.last_run == when
    kept = set(Backup.objects.values_list("pk", flat=True))
    assert kept == {manual.pk, *made[-2:]}  # the manual one stays, two scheduled ones are kept
    removed = [t["kwargs"]["path"] for t in host_tasks(sent_tasks, "berth.host.remove_archive")]
    assert removed == ["/b/x/s1.tar.zst", "/b/x/s2.tar.zst"]


def test_a_due_schedule_on_a_busy_instance_is_retried_soon(running, sent_tasks):
    now = timezone.now()
    services.set_schedule(instance=running, enabled=True, frequency="daily", keep=2, now=now)
    services.take_snapshot(instance=running, name="busy")
    when = now + timedelta(days=1, seconds=1)
    assert services.run_due_schedules(now=when) == []
    schedule = BackupSchedule.objects.get()
    assert "busy" in schedule.last_error and schedule.next_run == when + services.SCHEDULE_RETRY
    assert not Backup.objects.exists()


def test_the_beat_task_is_scheduled():
    assert settings.CELERY_BEAT_SCHEDULE["run-backup-schedules"]["task"] == "berth.panel.run_backup_schedules"
    from panel.backups.tasks import run_backup_schedules

    assert run_backup_schedules.name == "berth.panel.run_backup_schedules"


def test_restore_into_a_new_service_with_a_used_external_id_is_a_400(api, running, sent_tasks):
    backup = backup_done(api, running, sent_tasks)
    body = problem(api.post(f"/api/v1/services/{running.pk}/backups/{backup.pk}/restore/",
                            {"new_service": {"hostname": "copy", "external_id": "svc-1"}}, format="json"),
                   400, "validation-error")
    assert "external_id" in body["errors"]
    assert Instance.objects.count() == 1

