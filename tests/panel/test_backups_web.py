"""The instance page's "Snapshots & backups" tab: rendered with the page and as its own part,
its actions for the owner and for staff (JSON for the page's script, plain pages without it),
restores and deletions confirmed first, other customers' instances 404."""

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse

from panel.backups import services
from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
JSON = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture(autouse=True)
def _commit_is_now(monkeypatch):
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())


@pytest.fixture
def running(customer, plan, image, host, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="web")
    op = instance.operations.get()
    results.record_operation_started(op.pk)
    results.record_operation_finished(op.pk, ok=True, power_state="running")
    instance.refresh_from_db()
    return instance


@pytest.fixture
def owner(client, customer):
    client.force_login(customer.user)
    return client


def finish(operation, **result):
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=True, power_state="running", result=result)


def test_the_tab_is_on_the_page_and_says_backups_outlive_the_instance(owner, running):
    page = owner.get(reverse("instance-detail", args=[running.pk])).content.decode()
    assert 'id="tab-backups"' in page and "Snapshots &amp; backups" in page
    assert "Backups are kept when the instance is terminated" in page
    assert "No snapshots." in page and "js/backups.js" in page
    part = owner.get(reverse("backups-part", args=[running.pk]))
    assert part.status_code == 200 and b"Take snapshot" in part.content


def test_take_restore_and_delete_a_snapshot_from_the_page(owner, running, sent_tasks):
    response = owner.post(reverse("snapshot-take", args=[running.pk]), {"name": "pre"}, **JSON)
    assert response.status_code == 202, response.content
    take = Operation.objects.get(pk=response.json()["operation"])
    assert (take.action, take.source) == ("snapshot", "ui")
    finish(take, snapshot="pre", size_bytes=3 * 1024 * 1024)
    part = owner.get(reverse("backups-part", args=[running.pk])).content.decode()
    assert 'id="snapshot-pre"' in part and "3.0\xa0MB" in part

    url = reverse("snapshot-restore", args=[running.pk, "pre"])
    confirm = owner.get(url)  # without script: a page that says what is lost
    assert confirm.status_code == 200 and b"is lost" in confirm.content
    assert not running.operations.filter(action="restore_snapshot").exists()
    unconfirmed = owner.post(url, **JSON)  # a post without confirm=yes only shows the page again
    assert unconfirmed.status_code == 200 and not running.operations.filter(action="restore_snapshot").exists()
    response = owner.post(url, {"confirm": "yes"}, **JSON)
    assert response.status_code == 202, response.content
    finish(Operation.objects.get(pk=response.json()["operation"]))

    response = owner.post(reverse("snapshot-delete", args=[running.pk, "pre"]), {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"].endswith("#tab-backups")
    finish(running.operations.get(action="delete_snapshot"))
    assert not Snapshot.objects.exists()


def test_refusals_are_json_with_the_reason(owner, running, sent_tasks):
    bad = owner.post(reverse("snapshot-take", args=[running.pk]), {"name": "Bad Name"}, **JSON)
    assert bad.status_code == 400 and "name" in bad.json()["errors"]
    owner.post(reverse("backup-take", args=[running.pk]), **JSON)
    busy = owner.post(reverse("snapshot-take", args=[running.pk]), {"name": "x"}, **JSON)
    assert busy.status_code == 409 and "busy" in busy.json()["detail"]
    assert Snapshot.objects.count() == 0 and Backup.objects.count() == 1


def test_backup_restore_into_a_new_instance_and_delete(owner, running, sent_tasks):
    response = owner.post(reverse("backup-take", args=[running.pk]), **JSON)
    assert response.status_code == 202
    backup = Backup.objects.get()
    finish(backup.operation, path=f"/t/{running.uuid.hex}/{backup.archive_name}.tar.zst",
           size_bytes=10, sha256="ef" * 32)
    backup.refresh_from_db()
    response = owner.post(reverse("backup-restore-new", args=[running.pk, backup.pk]), {"hostname": "copy"}, **JSON)
    assert response.status_code == 202, response.content
    new = Instance.objects.get(hostname="copy")
    assert response.json()["redirect"] == reverse("instance-detail", args=[new.pk])
    response = owner.post(reverse("backup-delete", args=[running.pk, backup.pk]), {"confirm": "yes"}, **JSON)
    assert response.status_code == 200 and not Backup.objects.exists()
    assert [t["kwargs"] for t in sent_tasks if t["name"] == "berth.host.remove_archive"] == [
        {"path": backup.path}]


def test_the_schedule_form(owner, running):
    url = reverse("backup-schedule", args=[running.pk])
    response = owner.post(url, {"enabled": "on", "frequency": "weekly", "keep": "4"}, **JSON)
    assert response.status_code == 200, response.content
    schedule = BackupSchedule.objects.get()
    assert (schedule.enabled, schedule.frequency, schedule.keep) == (True, "weekly", 4)
    bad = owner.post(url, {"enabled": "on", "frequency": "weekly", "keep": "0"}, **JSON)
    assert bad.status_code == 400 and "keep" in bad.json()["errors"]
    page = owner.post(url, {"frequency": "daily", "keep": "2"})
    assert page.status_code == 302
    assert BackupSchedule.objects.get().enabled is False


def test_other_customers_get_404_and_staff_see_and_act(client, running, sent_tasks):
    stranger = CustomerFactory()
    client.force_login(stranger.user)
    for url in (reverse("backups-part", args=[running.pk]), reverse("snapshot-take", args=[running.pk])):
        assert client.post(url, {"name": "x"}).status_code in (404, 405)
        assert client.get(url).status_code in (404, 405)
    assert not Snapshot.objects.exists()
    staff = get_user_model().objects.create_user("ops-admin", password="x" * 20, is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("backups-part", args=[running.pk])).status_code == 200
    response = client.post(reverse("snapshot-take", args=[running.pk]), {"name": "by-staff"}, **JSON)
    assert response.status_code == 202
    assert Operation.objects.get(pk=response.json()["operation"]).requested_by == staff


def test_a_terminated_instance_still_lists_its_backups(owner, running, sent_tasks):
    backup, op = services.start_backup(instance=running)
    finish(op, path=f"/t/{running.uuid.hex}/{backup.archive_name}.tar.zst", size_bytes=10, sha256="ef" * 32)
    terminate = owner.post(reverse("instance-action", args=[running.pk, "terminate"]), {"confirm": "web"}, **JSON)
    assert terminate.status_code == 202
    op = running.operations.get(action="terminate")
    results.record_operation_started(op.pk)
    results.record_operation_finished(op.pk, ok=True, power_state="absent")
    part = owner.get(reverse("backups-part", args=[running.pk])).content.decode()
    assert f'id="backup-{backup.pk}"' in part and "Restore into a new instance" in part
    assert "Take snapshot" not in part


def test_the_part_shows_the_saved_schedule(owner, running):
    services.set_schedule(instance=running, enabled=True, frequency="weekly", keep=3)
    part = owner.get(reverse("backups-part", args=[running.pk])).content.decode()
    assert '<option value="weekly" selected>' in part and 'value="3"' in part
