"""The customer's instance pages: list, order form, instance page, its parts and actions."""

import re
import subprocess
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from panel.accounts.models import SiteSettings, SshKey
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from panel.usage.models import UsageSample
from panel.web.templatetags.berth import duration
from tests.factories import HostFactory, ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db

ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsF0ndVHJ3rDyZNgvm05fiQRdjQqPwLqyUjYSuhMUZk "
           "alice@laptop")


@pytest.fixture
def logged_in(client, customer):
    client.force_login(customer.user)
    return client


@pytest.fixture
def instance(customer, plan, image, host, sent_tasks):
    return order_instance(customer=customer, plan=plan, image=image, hostname="web")


@pytest.fixture
def running(instance):
    op = instance.operations.get()
    results.record_operation_started(op.pk)
    results.record_operation_finished(op.pk, ok=True, power_state="running")
    instance.refresh_from_db()
    return instance


def order_data(plan_row, image_row, **changes):
    data = {"kind": plan_row.kind, "plan": plan_row.pk, "image": image_row.pk, "hostname": "shop",
            "access": "password", "root_password": "a long enough secret",
            "root_password_again": "a long enough secret", "order_token": "t-1"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


# --- Access ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,args", [
    ("instance-list", []), ("instance-order", []), ("instance-detail", [1]),
    ("instance-part", [1, "history"]), ("instance-usage", [1]), ("instance-action", [1, "stop"]),
])
def test_pages_need_a_login(client, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_another_customers_instance_is_a_404_everywhere(client, other_customer, running):
    client.force_login(other_customer.user)
    pk = running.pk
    for url in (reverse("instance-detail", args=[pk]), reverse("instance-part", args=[pk, "summary"]),
                reverse("instance-part", args=[pk, "history"]), reverse("instance-usage", args=[pk]),
                reverse("instance-action", args=[pk, "terminate"])):
        assert client.get(url).status_code == 404, url
    response = client.post(reverse("instance-action", args=[pk, "terminate"]), {"confirm": "web"})
    assert response.status_code == 404
    assert client.post(reverse("instance-action", args=[pk, "stop"])).status_code == 404
    assert running.operations.count() == 1
    assert "web" not in client.get(reverse("instance-list")).content.decode()


# --- Ordering -------------------------------------------------------------------------------

def test_order_with_a_root_password_keeps_only_its_hash(logged_in, plan, image, host, sent_tasks,
                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in.post(reverse("instance-order"), order_data(plan, image, hostname="Shop"))
    instance = Instance.objects.get()
    assert response.status_code == 302 and response.url == reverse("instance-detail", args=[instance.pk])
    assert instance.hostname == "shop"
    assert instance.root_password_hash.startswith("$6$") and "secret" not in instance.root_password_hash
    salt = instance.root_password_hash.split("$")[2]
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=b"a long enough secret",
                           capture_output=True, check=True).stdout.decode().strip()
    assert again == instance.root_password_hash
    assert sent_tasks[0]["kwargs"]["spec"]["root_password"] == instance.root_password_hash


def test_order_with_ssh_keys_puts_them_in_the_spec(logged_in, customer, plan, image, host, sent_tasks,
                                                   django_capture_on_commit_callbacks):
    key = SshKey.objects.create(customer=customer, name="laptop", public_key=ED25519, fingerprint="SHA256:x")
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in.post(reverse("instance-order"),
                                  order_data(plan, image, access="keys", ssh_keys=[key.pk]))
    assert response.status_code == 302
    instance = Instance.objects.get()
    assert instance.ssh_keys == ED25519 and instance.root_password_hash == ""
    assert sent_tasks[0]["kwargs"]["spec"]["ssh_keys"] == [ED25519]


def test_order_page_offers_vms_and_marks_plans_over_quota(logged_in, customer, plan, image, host):
    PlanFactory(name="vm-small", kind="vm", memory_mib=512)
    ImageFactory(name="tiny", kind="vm")
    PlanFactory(name="too-big", memory_mib=customer.max_memory_mib + 1)
    body = logged_in.get(reverse("instance-order")).content.decode()
    assert 'value="vm"' in body and "tiny" in body and 'data-kind="vm"' in body
    too_big = re.search(r'<div class="plan unavailable"[^>]*data-name="too-big".*?</div>', body, re.S)
    assert too_big and " disabled" in too_big.group(0) and "more than your quota left" in too_big.group(0)
    assert re.search(r'name="order_token" value="[0-9a-f]{32}"', body)


def test_a_vm_can_be_ordered(logged_in, host, sent_tasks):
    vm_plan, vm_image = PlanFactory(kind="vm"), ImageFactory(name="tiny", kind="vm")
    response = logged_in.post(reverse("instance-order"), order_data(vm_plan, vm_image, kind="vm"))
    assert response.status_code == 302
    assert Instance.objects.get().kind == "vm"


OTHER_KEY = object()


@pytest.mark.parametrize("changes,field,message", [
    ({"hostname": ""}, "hostname", "Enter a hostname."),
    ({"hostname": "bad_name"}, "hostname", "Use only letters, digits and hyphens"),
    ({"hostname": "-x"}, "hostname", "do not start or end with a hyphen"),
    ({"hostname": "x" * 64}, "hostname", "at most 63 characters"),
    ({"hostname": "1234"}, "hostname", "cannot be only digits"),
    ({"plan": 999999}, "plan", "Choose one of the plans listed."),
    ({"plan": None}, "plan", "Choose a plan."),
    ({"image": 999999}, "image", "Choose one of the images listed."),
    ({"image": None}, "image", "Choose an image."),
    ({"kind": "vm"}, "plan", "choose a virtual machine plan"),
    ({"kind": "lxc"}, "kind", "Choose a container or a virtual machine."),
    ({"access": None}, "access", "Choose how you will log in."),
    ({"access": "keys"}, "ssh_keys", "You have no SSH keys yet"),
    ({"access": "keys", "ssh_keys": OTHER_KEY}, "ssh_keys", "Choose among your own keys."),
    ({"root_password": "", "root_password_again": ""}, "root_password", "Enter a root password."),
    ({"root_password": "short", "root_password_again": "short"}, "root_password", "too short"),
    ({"root_password": "password123", "root_password_again": "password123"}, "root_password", "too common"),
    ({"root_password": "tab\there secret", "root_password_again": "tab\there secret"}, "root_password",
     "control characters"),
    ({"root_password_again": "something else"}, "root_password_again", "not the same"),
])
def test_order_form_shows_errors_next_to_the_field(logged_in, other_customer, plan, image, host,
                                                   changes, field, message):
    if changes.get("ssh_keys") is OTHER_KEY:
        changes["ssh_keys"] = [SshKey.objects.create(customer=other_customer, name="theirs",
                                                     public_key=ED25519, fingerprint="SHA256:y").pk]
    response = logged_in.post(reverse("instance-order"), order_data(plan, image, **changes))
    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(message in e for e in errors), errors
    body = response.content.decode()
    assert f'id="id_{field}_error"' in body  # the message sits next to its field
    assert not Instance.objects.exists()


def test_order_form_refuses_an_image_of_another_kind(logged_in, plan, host):
    vm_image = ImageFactory(name="tiny", kind="vm")
    response = logged_in.post(reverse("instance-order"), order_data(plan, vm_image))
    assert "is a virtual machine image" in response.context["form"].errors["image"][0]
    assert not Instance.objects.exists()


def test_order_form_says_when_no_host_has_room(logged_in, image, host):
    huge = PlanFactory(memory_mib=8192)  # within quota, more than the host has
    response = logged_in.post(reverse("instance-order"), order_data(huge, image))
    assert "No host has room" in response.context["form"].non_field_errors()[0]
    assert not Instance.objects.exists()


def test_order_form_says_when_over_quota(logged_in, customer, plan, image, host):
    customer.max_instances = 0
    customer.save()
    response = logged_in.post(reverse("instance-order"), order_data(plan, image))
    assert "quota allows 0 instances" in response.context["form"].non_field_errors()[0]
    assert 'role="alert"' in response.content.decode()


def test_a_suspended_customer_cannot_order(logged_in, customer, plan, image, host):
    customer.is_suspended, customer.suspended_reason = True, "unpaid invoice"
    customer.save()
    body = logged_in.get(reverse("instance-order")).content.decode()
    assert "You cannot order while your account is suspended" in body and "unpaid invoice" in body
    response = logged_in.post(reverse("instance-order"), order_data(plan, image))
    assert "suspended" in response.context["form"].non_field_errors()[0]
    assert not Instance.objects.exists()


def test_the_same_order_form_posted_twice_makes_one_instance(logged_in, plan, image, host, sent_tasks,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = logged_in.post(reverse("instance-order"), order_data(plan, image))
        second = logged_in.post(reverse("instance-order"), order_data(plan, image))
    instance = Instance.objects.get()
    assert first.url == second.url == reverse("instance-detail", args=[instance.pk])
    assert len(sent_tasks) == 1


def test_a_spent_order_form_with_other_data_is_refused_and_renewed(logged_in, plan, image, host, sent_tasks):
    logged_in.post(reverse("instance-order"), order_data(plan, image))
    response = logged_in.post(reverse("instance-order"), order_data(plan, image, hostname="another"))
    assert "already used to order shop" in response.context["form"].non_field_errors()[0]
    assert Instance.objects.count() == 1
    token = re.search(r'name="order_token" value="([^"]+)"', response.content.decode()).group(1)
    assert token != "t-1"
    assert logged_in.post(reverse("instance-order"),
                          order_data(plan, image, hostname="another", order_token=token)).status_code == 302
    assert Instance.objects.count() == 2


# --- The list -------------------------------------------------------------------------------

def test_list_filters_searches_and_pages(logged_in, customer, plan, image, sent_tasks):
    HostFactory(cpus=64, memory_mib=65536)
    customer.max_instances, customer.max_vcpus, customer.max_memory_mib = 50, 50, 50000
    customer.save()
    for n in range(23):
        order_instance(customer=customer, plan=plan, image=image, hostname=f"web-{n:02d}")
    gone = Instance.objects.get(hostname="web-00")
    Instance.objects.filter(pk=gone.pk).update(state="terminated")
    url = reverse("instance-list")

    first = logged_in.get(url)
    assert first.context["page"].paginator.count == 22  # terminated ones only when asked for
    assert len(first.context["page"].object_list) == 20
    assert "page 1 of 2" in first.content.decode()
    assert len(logged_in.get(url, {"page": 2}).context["page"].object_list) == 2
    assert [i.hostname for i in logged_in.get(url, {"state": "terminated"}).context["page"]] == ["web-00"]
    assert [i.hostname for i in logged_in.get(url, {"q": "WEB-07"}).context["page"]] == ["web-07"]
    address = Instance.objects.get(hostname="web-05").ipv4[0]
    assert [i.hostname for i in logged_in.get(url, {"q": address}).context["page"]] == ["web-05"]
    assert logged_in.get(url, {"kind": "vm"}).context["page"].paginator.count == 0
    assert "No instances match" in logged_in.get(url, {"kind": "vm"}).content.decode()
    rows = logged_in.get(url, {"q": "web-07", "part": "rows"})
    assert rows.content.decode().lstrip().startswith("<p") and "<html" not in rows.content.decode()


def test_a_bad_filter_is_refused_next_to_its_field_and_the_others_still_apply(logged_in, running):
    url = reverse("instance-list")
    response = logged_in.get(url, {"state": "bogus", "q": "x" * 101, "kind": "vm"})
    assert response.status_code == 200
    body = response.content.decode()
    assert re.search(r'<ul class="field-error" id="id_state_error"><li>Select a valid choice. '
                     r'bogus is not one of the available choices.</li></ul>', body)
    assert re.search(r'<ul class="field-error" id="id_q_error"><li>Ensure this value has at most 100 '
                     r'characters \(it has 101\).</li></ul>', body)
    assert 'aria-describedby="id_state_error"' in body  # the input points at its message
    assert response.context["page"].paginator.count == 0  # kind=vm still filters the container out
    assert "id_kind_error" not in body
    assert logged_in.get(url, {"state": "bogus"}).context["page"].paginator.count == 1


def test_list_shows_state_addresses_plan_and_uptime(logged_in, running):
    body = logged_in.get(reverse("instance-list")).content.decode()
    assert f'data-instance-state="{running.pk}"' in body and ">running<" in body
    assert running.ipv4[0] in body and running.plan.name in body
    assert f'data-uptime="{running.pk}" data-since="' in body


# --- The instance page ----------------------------------------------------------------------

def test_instance_page_shows_state_address_and_enabled_actions(logged_in, running):
    response = logged_in.get(reverse("instance-detail", args=[running.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert f'data-instance-state="{running.pk}" data-state-version="2">running<' in body
    assert "10.99.0.2" in body
    assert re.search(r'data-action="start"[^>]*disabled', body)
    assert not re.search(r'data-action="stop"[^>]*disabled', body)
    assert '<dialog id="dialog-terminate"' in body and 'id="console"' in body
    assert 'id="vnc"' not in body  # a container has no screen


def test_a_vms_page_has_a_screen_tab(logged_in, customer, host, sent_tasks):
    vm = order_instance(customer=customer, plan=PlanFactory(kind="vm"), image=ImageFactory(kind="vm"),
                        hostname="vm1")
    body = logged_in.get(reverse("instance-detail", args=[vm.pk])).content.decode()
    assert '<div id="vnc"' in body and 'id="console"' in body


def test_a_suspended_instance_says_why_and_offers_no_action(logged_in, running):
    SiteSettings.objects.create(support_email="help@example.net")
    Instance.objects.filter(pk=running.pk).update(state="suspended", suspended_reason="Invoice 42 is unpaid.")
    body = logged_in.get(reverse("instance-detail", args=[running.pk])).content.decode()
    assert "This instance is suspended</strong>: Invoice 42 is unpaid." in body
    assert 'href="mailto:help@example.net' in body
    assert re.search(r'id="actions-card"[^>]*hidden', body)
    for action, data in (("terminate", {"confirm": "web"}), ("start", {})):
        response = logged_in.post(reverse("instance-action", args=[running.pk, action]), data,
                                  HTTP_ACCEPT="application/json")
        assert response.status_code == 409 and "suspended" in response.json()["detail"]
    assert running.operations.count() == 1


def test_the_summary_part_follows_the_state(logged_in, running):
    Instance.objects.filter(pk=running.pk).update(state="error", error="disk full")
    body = logged_in.get(reverse("instance-part", args=[running.pk, "summary"])).content.decode()
    assert "disk full" in body and "<html" not in body
    assert logged_in.get(reverse("instance-part", args=[running.pk, "nope"])).status_code == 404


def test_history_says_who_did_what_when_and_how_long(logged_in, customer, running):
    op = running.operations.get()
    Operation.objects.filter(pk=op.pk).update(requested_by=customer.user, started_at=op.created_at,
                                              finished_at=op.created_at + timedelta(seconds=75))
    Operation.objects.create(instance=running, action="stop", state="failed", source="api", error="host gone")
    body = logged_in.get(reverse("instance-part", args=[running.pk, "history"])).content.decode()
    create_row = re.search(rf'<tr id="operation-{op.pk}".*?</tr>', body, re.S).group(0)
    assert "Create" in create_row and "You" in create_row and "1 min 15 s" in create_row and "succeeded" in create_row
    assert "API" in body and "host gone" in body and "failed" in body


# --- Actions --------------------------------------------------------------------------------

def test_action_in_the_wrong_state_answers_409_with_a_reason(logged_in, running):
    response = logged_in.post(reverse("instance-action", args=[running.pk, "start"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert "Cannot start an instance that is running" in response.json()["detail"]


def test_action_while_another_runs_answers_409(logged_in, instance):
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "terminate"]),
                              {"confirm": "web"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 409 and "busy" in response.json()["detail"]


def test_stop_from_the_page(logged_in, running, sent_tasks):
    response = logged_in.post(reverse("instance-action", args=[running.pk, "stop"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    assert running.operations.filter(action="stop").exists()


@pytest.mark.parametrize("data,message", [
    ({}, "Type the hostname to confirm."),
    ({"confirm": "other"}, "That is not web; nothing was done."),
])
def test_terminate_needs_the_hostname_typed(logged_in, running, data, message):
    url = reverse("instance-action", args=[running.pk, "terminate"])
    response = logged_in.post(url, data, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and response.json()["errors"]["confirm"] == [message]
    page = logged_in.post(url, data)  # without script: the confirmation page again
    assert page.status_code == 200 and message in page.content.decode()
    running.refresh_from_db()
    assert running.state == "running" and running.operations.count() == 1


def test_terminate_with_the_hostname(logged_in, running):
    url = reverse("instance-action", args=[running.pk, "terminate"])
    assert "Type the hostname to confirm" in logged_in.get(url).content.decode()
    response = logged_in.post(url, {"confirm": " WEB "}, HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    running.refresh_from_db()
    assert running.state == "terminating"


def test_rebuild_without_script_goes_through_its_page(logged_in, running):
    url = reverse("instance-action", args=[running.pk, "rebuild"])
    response = logged_in.post(url, {"confirm": "web"})
    assert response.status_code == 302 and response.url == reverse("instance-detail", args=[running.pk])
    assert running.operations.filter(action="rebuild").exists()


def test_change_plan(logged_in, running):
    bigger = PlanFactory(name="bigger", memory_mib=512)
    PlanFactory(name="a-vm-plan", kind="vm")
    url = reverse("instance-action", args=[running.pk, "change_plan"])
    page = logged_in.get(url).content.decode()
    assert "bigger" in page and "a-vm-plan" not in page
    response = logged_in.post(url, {"plan": bigger.pk}, HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    running.refresh_from_db()
    assert running.plan == bigger


@pytest.mark.parametrize("plan_name,message", [("same", "Choose one of the plans listed."),
                                               ("vm", "Choose one of the plans listed."),
                                               ("none", "Choose the new plan.")])
def test_change_plan_refuses_bad_choices(logged_in, running, plan_name, message):
    plans = {"same": running.plan.pk, "vm": PlanFactory(kind="vm").pk, "none": ""}
    response = logged_in.post(reverse("instance-action", args=[running.pk, "change_plan"]),
                              {"plan": plans[plan_name]}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and response.json()["errors"]["plan"] == [message]
    assert running.operations.count() == 1


def test_change_plan_beyond_the_quota_says_so(logged_in, customer, running):
    huge = PlanFactory(memory_mib=customer.max_memory_mib + 1024)
    response = logged_in.post(reverse("instance-action", args=[running.pk, "change_plan"]),
                              {"plan": huge.pk}, HTTP_ACCEPT="application/json")
    assert response.status_code == 409 and "quota" in response.json()["detail"]
    running.refresh_from_db()
    assert running.plan != huge


def test_unknown_action_is_refused(logged_in, running):
    response = logged_in.post(reverse("instance-action", args=[running.pk, "suspend"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 404


# --- Usage ----------------------------------------------------------------------------------

def sample(instance, at, cpu, mem_mib, rx, tx):
    UsageSample.objects.create(instance=instance, at=at, cpu_seconds=cpu, memory_bytes=mem_mib * 1024 * 1024,
                               net_rx_bytes=rx, net_tx_bytes=tx, disk_used_bytes=0)


def test_usage_series_are_rates_with_gaps_and_restarts(logged_in, running):
    now = timezone.now()
    t0 = now - timedelta(minutes=30)
    sample(running, t0, 10.0, 40, 1000, 500)
    sample(running, t0 + timedelta(seconds=30), 13.0, 42, 31720, 3572)   # 10 % of 1 vCPU, 1 KiB/s in
    sample(running, t0 + timedelta(seconds=600), 20.0, 44, 40000, 4000)  # after a gap (stopped)
    sample(running, t0 + timedelta(seconds=630), 1.5, 45, 100, 10)        # restarted: counters reset
    sample(running, t0 + timedelta(seconds=660), 4.5, 46, 100, 10)
    data = logged_in.get(reverse("instance-usage", args=[running.pk]), {"window": "hour"}).json()
    assert data["cpu_percent"] == [10.0, None, 10.0]
    assert data["net_rx_bps"] == [1024, None, 0] and data["memory_mib"] == [42.0, None, 46.0]
    assert data["latest"]["cpu_percent"] == 10.0 and data["memory_limit_mib"] == running.plan.memory_mib
    day = logged_in.get(reverse("instance-usage", args=[running.pk]), {"window": "day"}).json()
    assert len(day["t"]) <= 288 and day["latest"]["cpu_percent"] == 10.0


def test_usage_without_samples_and_with_a_bad_window(logged_in, running):
    data = logged_in.get(reverse("instance-usage", args=[running.pk])).json()
    assert data["t"] == [] and data["latest"] is None
    response = logged_in.get(reverse("instance-usage", args=[running.pk]), {"window": "year"})
    assert response.status_code == 400 and "hour, day" in response.json()["detail"]


def test_not_found_pages_are_the_panels_own(logged_in):
    response = logged_in.get("/instances/999999/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "<title>Not found · Berth</title>" in body and "belongs to another account" in body


@pytest.mark.parametrize("seconds,words", [(0.4, "under 1 s"), (59, "59 s"), (75, "1 min 15 s"),
                                           (3 * 3600 + 55, "3 h 0 min"), (2 * 86400 + 7200, "2 d 2 h")])
def test_durations_read_like_an_uptime(seconds, words):
    assert duration(timedelta(seconds=seconds)) == words
