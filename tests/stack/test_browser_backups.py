"""The "Snapshots & backups" tab in a real Chromium against the live stack: take a snapshot and
a backup and watch them become ready without a reload, restore the snapshot after confirming in
the dialog (a cancelled dialog does nothing), save a schedule, delete the snapshot. The page is
audited (labels, contrast, phone width) and photographed into docs/screenshots/."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.instances.models import Operation
from tests.stack.test_backups_flow import (  # noqa: F401
    backup_stack,
    running_container,
    shell,
    target,
    world,
)
from tests.stack.test_browser_order import DESKTOP, browser, check_page  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def logged_in_page(browser, world):  # noqa: F811
    context = browser.new_context(viewport=DESKTOP)
    cookie = dict(world["headers"])["Cookie"].split("=", 1)[1]
    context.add_cookies([{"name": "sessionid", "value": cookie, "domain": urlparse(world["stack"].url).hostname,
                          "path": "/"}])
    return context.new_page()


def wait_finished(instance, action: str, timeout: float = 90) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = instance.operations.filter(action=action).first()
        if operation is not None and operation.is_finished:
            return operation
        time.sleep(0.3)
    raise AssertionError(f"no finished {action} of {instance}")


def test_snapshots_and_backups_tab(world, browser):  # noqa: F811
    instance = running_container(world, "tab-1")
    shell(world, instance, "echo one > /root/f; sync")
    page = logged_in_page(browser, world)
    page.goto(f"{world['stack'].url}instances/{instance.pk}/#tab-backups")
    tab = page.locator("#tab-backups")
    expect(tab).to_be_visible()
    expect(tab).to_contain_text("Backups are kept when the instance is terminated")

    # Take a snapshot: the row appears, then turns ready by itself (live events, no reload).
    page_id = page.evaluate("() => (window.__id = Math.random())")
    tab.get_by_label("Snapshot name").fill("first")
    tab.get_by_role("button", name="Take snapshot").click()
    row = tab.locator("#snapshot-first")
    expect(row).to_be_visible(timeout=15_000)
    expect(row.locator(".badge")).to_have_text("ready", timeout=90_000)
    assert Snapshot.objects.get(instance=instance).state == "ready"

    # Back up now: ready, with its size, without a reload.
    tab.get_by_role("button", name="Back up now").click()
    backup_row = tab.locator("#backups tbody tr").first
    expect(backup_row.locator(".badge")).to_have_text("ready", timeout=120_000)
    expect(backup_row).to_contain_text("SHA-256")
    assert Backup.objects.get(instance=instance).state == "ready"
    assert page.evaluate("() => window.__id") == page_id  # the page was never reloaded

    # Restore asks first; cancelling does nothing.
    shell(world, instance, "echo two > /root/f; sync")
    restore_button = row.get_by_role("button", name="Restore…")
    expect(restore_button).to_be_enabled(timeout=30_000)
    restore_button.click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text("is lost")
    dialog.get_by_role("button", name="Cancel").click()
    assert not instance.operations.filter(action="restore_snapshot").exists()
    restore_button.click()
    dialog.get_by_role("button", name="Restore first").click()
    restore = wait_finished(instance, "restore_snapshot")
    assert restore.state == Operation.State.SUCCEEDED, restore.error
    expect(tab.locator("#backups-message")).to_contain_text("Restore of first requested")
    assert shell(world, instance, "cat /root/f") == "one"

    # The schedule form.
    tab.get_by_label("Back up automatically").check()
    tab.get_by_label("Every").select_option("weekly")
    tab.get_by_label("keeping the last").fill("3")
    tab.get_by_role("button", name="Save").click()
    expect(tab.locator("#backups-message")).to_have_text("Schedule saved.", timeout=15_000)
    schedule = BackupSchedule.objects.get(instance=instance)
    assert (schedule.enabled, schedule.frequency, schedule.keep) == (True, "weekly", 3)
    expect(tab).to_contain_text("Next backup")
    expect(tab.get_by_label("Every")).to_have_value("weekly")  # as saved, after the re-render

    # A bad snapshot name: the reason, nothing made.
    tab.get_by_label("Snapshot name").fill("Bad_Name")
    tab.get_by_label("Snapshot name").evaluate("el => el.removeAttribute('pattern')")  # the server's own check
    tab.get_by_role("button", name="Take snapshot").click()
    expect(tab.locator("#backups-message")).to_contain_text("lower-case", timeout=15_000)
    assert Snapshot.objects.filter(instance=instance).count() == 1

    check_page(page, "instance-backups", phone_of=lambda p: p.locator("#tab-backups-button").click())

    # Delete the snapshot (confirmed): gone from the list, live.
    row.get_by_role("button", name="Delete…").click()
    dialog.get_by_role("button", name="Delete first").click()
    expect(tab.locator("#snapshot-first")).to_have_count(0, timeout=60_000)
    assert not Snapshot.objects.filter(instance=instance).exists()
    page.context.close()
