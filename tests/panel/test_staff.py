"""The staff pages: who may see them, enrolling a host (the credential shown once), the host
switches and page, plans, images, customers (quota, suspension through the action path), bulk
actions, the logs, and the Prometheus endpoints."""

import re
import secrets

import pytest
import redis
from django.contrib.auth import get_user_model
from django.urls import reverse

from panel.audit.models import AuditEntry
from panel.audit.services import record
from panel.catalog.models import Image, Plan
from panel.hosts.models import Host
from panel.instances.models import Instance, Operation
from panel.instances.services.ordering import order_instance
from panel.instances.states import transition
from tests.factories import CustomerFactory, HostFactory, ImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("root-admin", password="x" * 20, is_staff=True)
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def acl_prefix(settings):
    settings.BERTH_REDIS_USER_PREFIX = f"berth-test-{secrets.token_hex(3)}-"
    yield
    admin = redis.Redis.from_url(settings.REDIS_URL)
    for user in admin.acl_users():
        if user.startswith(settings.BERTH_REDIS_USER_PREFIX):
            admin.acl_deluser(user)


def running(customer, plan, image, hostname):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname=hostname)
    transition(instance.pk, "provisioning")
    Operation.objects.filter(instance=instance).update(state="succeeded")
    return transition(instance.pk, "running")


STAFF_PAGES = ["staff-dashboard", "staff-host-list", "staff-host-enrol", "staff-plan-list", "staff-plan-new",
               "staff-image-list", "staff-customer-list", "staff-instance-list", "staff-audit", "staff-operations"]


@pytest.mark.parametrize("name", STAFF_PAGES)
def test_pages_are_for_staff_only(client, customer, name):
    url = reverse(name)
    assert client.get(url).url.startswith(reverse("login"))
    client.force_login(customer.user)
    assert client.get(url).status_code == 403


@pytest.mark.parametrize("name", STAFF_PAGES)
def test_every_page_renders_for_staff(staff, host, name, customer, plan, image):
    running(customer, plan, image, "web")
    assert staff.get(reverse(name)).status_code == 200


def test_staff_posts_are_refused_to_customers(client, customer, host):
    client.force_login(customer.user)
    assert client.post(reverse("staff-host-switch", args=[host.pk, "disable"])).status_code == 403
    host.refresh_from_db()
    assert host.is_enabled


def test_enrol_shows_the_credential_once(staff, acl_prefix):
    response = staff.post(reverse("staff-host-enrol"), {
        "name": "fra-2", "network": "10.60.0.0/24", "bridge": "berth0", "uid_base": 500_000_000})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    page = response.content.decode()
    [url] = set(re.findall(r"BERTH_REDIS_URL=(redis://\S+)", page))
    host = Host.objects.get(name="fra-2")
    assert redis.Redis.from_url(url).ping()  # the shown credential really works
    secret = url.split(":")[2].split("@")[0]
    assert staff.get(reverse("staff-host-detail", args=[host.pk])).content.decode().count(secret) == 0
    assert secret not in str(list(AuditEntry.objects.values()))


def test_enrol_form_says_what_is_wrong(staff, host):
    response = staff.post(reverse("staff-host-enrol"), {
        "name": "new", "network": "10.99.0.0/25", "bridge": "berth0", "uid_base": 500_000_000})
    assert response.status_code == 200
    assert f"overlaps host {host.name}" in response.content.decode()
    response = staff.post(reverse("staff-host-enrol"), {"name": "", "network": "banana", "uid_base": 5})
    text = response.content.decode()
    assert "Not an IPv4 network" in text and "This field is required." in text
    assert Host.objects.count() == 1


def test_rotate_shows_a_new_credential(staff, acl_prefix):
    from panel.hosts.services import enrol_host

    host, old = enrol_host(name="rot", network="10.61.0.0/24")
    response = staff.post(reverse("staff-host-rotate", args=[host.pk]))
    assert "no longer works" in response.content.decode()
    assert old not in response.content.decode()


def test_disable_and_drain_from_the_page(staff, host, customer, plan, image):
    running(customer, plan, image, "web")
    staff.post(reverse("staff-host-switch", args=[host.pk, "disable"]))
    staff.post(reverse("staff-host-switch", args=[host.pk, "drain"]))
    host.refresh_from_db()
    assert not host.is_enabled and host.is_draining
    page = staff.get(reverse("staff-host-detail", args=[host.pk])).content.decode()
    assert "1 instance left on it" in page
    assert staff.post(reverse("staff-host-switch", args=[host.pk, "explode"])).status_code == 404


def test_host_page_shows_orphans_failures_and_pool(staff, host, customer, plan, image):
    Host.objects.filter(pk=host.pk).update(facts={"orphans": ["feedfacecafe"], "load": [0.1]})
    running(customer, plan, image, "web")
    record(action="placement.failed", source="ui", message="x",
           data={"hostname": "big", "reasons": {host.name: "not enough memory (256 of 256 MiB in use)"}})
    page = staff.get(reverse("staff-host-detail", args=[host.pk])).content.decode()
    assert "feedfacecafe" in page and "not enough memory (256 of 256 MiB in use)" in page
    assert "10.99.0.2" in page and host.bridge in page
    live = staff.get(reverse("staff-host-live", args=[host.pk])).json()
    assert live["memory"]["used"] == plan.memory_mib and live["instances"] == 1


def test_settings_are_validated(staff, host):
    staff.post(reverse("staff-host-settings", args=[host.pk]), {"cpu_overcommit": "500", "memory_overcommit": "1", "notes": ""})
    host.refresh_from_db()
    assert host.cpu_overcommit == 1
    staff.post(reverse("staff-host-settings", args=[host.pk]), {"cpu_overcommit": "8", "memory_overcommit": "1.5", "notes": "RAM swap Friday"})
    host.refresh_from_db()
    assert (host.cpu_overcommit, float(host.memory_overcommit), host.notes) == (8, 1.5, "RAM swap Friday")


def test_weigher_is_set_from_the_hosts_page(staff):
    staff.post(reverse("staff-placement-policy"), {"weigher": "pack"})
    from panel.hosts.models import PlacementPolicy

    assert PlacementPolicy.current().weigher == "pack"


def test_plan_form_pins_hosts_and_refuses_nonsense(staff, host):
    other = HostFactory(name="vmhost", supports_containers=False, pool="10.62.0.0/24")
    data = {"name": "ct-pinned", "kind": "container", "vcpus": 1, "memory_mib": 512, "disk_gib": 5,
            "pids_max": 512, "price_hourly": "0.01", "price_monthly": "5", "is_active": "on", "hosts": [host.pk]}
    assert staff.post(reverse("staff-plan-new"), data).status_code == 302
    plan = Plan.objects.get(name="ct-pinned")
    assert list(plan.hosts.all()) == [host]
    bad = {**data, "name": "bad", "memory_mib": 1, "price_monthly": "-1", "hosts": [other.pk]}
    text = staff.post(reverse("staff-plan-new"), bad).content.decode()
    assert "Use a value from 64" in text and "cannot be negative" in text and "vmhost cannot run containers" in text
    assert not Plan.objects.filter(name="bad").exists()


def test_plan_kind_cannot_change_under_instances(staff, host, customer, plan, image):
    running(customer, plan, image, "web")
    data = {"name": plan.name, "kind": "vm", "vcpus": 1, "memory_mib": 256, "disk_gib": 1, "pids_max": 512,
            "price_hourly": "0", "price_monthly": "3"}
    text = staff.post(reverse("staff-plan-edit", args=[plan.pk]), data).content.decode()
    assert "its kind cannot change" in text
    plan.refresh_from_db()
    assert plan.kind == "container"


def test_retire_and_enable_an_image(staff, image):
    staff.post(reverse("staff-image-switch", args=[image.pk, "retire"]))
    image.refresh_from_db()
    assert not image.is_active
    staff.post(reverse("staff-image-switch", args=[image.pk, "enable"]))
    image.refresh_from_db()
    assert image.is_active


def test_build_is_queued_on_the_panel_worker(staff, monkeypatch, django_capture_on_commit_callbacks):
    from panel.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, kwargs=None, queue=None, **_: sent.append((name, kwargs, queue)))
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(reverse("staff-image-build"), {"image": "busybox:container"})
    assert sent == [("berth.panel.build_image", {"name": "busybox", "kind": "container"}, "panel")]
    assert staff.post(reverse("staff-image-build"), {"image": "windows:vm"}).status_code == 302
    assert len(sent) == 1 and not Image.objects.filter(name="windows").exists()


def test_suspending_a_customer_suspends_their_instances(staff, host, plan, image, sent_tasks):
    customer = CustomerFactory(max_instances=5)
    web = running(customer, plan, image, "web")
    db = running(customer, plan, image, "db")
    staff.post(reverse("staff-customer-suspend", args=[customer.pk]), {"reason": "Unpaid invoice 42"})
    customer.refresh_from_db()
    assert customer.is_suspended and customer.suspended_reason == "Unpaid invoice 42"
    ops = Operation.objects.filter(action="suspend")
    assert {o.instance_id for o in ops} == {web.pk, db.pk}
    assert all(o.requested_by == staff.user for o in ops)
    assert Instance.objects.get(pk=web.pk).suspended_reason == "Customer suspended: Unpaid invoice 42"

    for op in ops:  # the host reports both done
        from panel.instances.services.results import record_operation_finished

        record_operation_finished(op.pk, ok=True, power_state="stopped")
    staff.post(reverse("staff-customer-unsuspend", args=[customer.pk]))
    customer.refresh_from_db()
    assert not customer.is_suspended
    assert Operation.objects.filter(action="unsuspend").count() == 2


def test_suspend_needs_a_reason(staff, customer):
    staff.post(reverse("staff-customer-suspend", args=[customer.pk]), {"reason": ""})
    customer.refresh_from_db()
    assert not customer.is_suspended


def test_quota_form(staff, customer):
    staff.post(reverse("staff-customer-detail", args=[customer.pk]),
               {"max_instances": 3, "max_vcpus": 4, "max_memory_mib": 2048})
    customer.refresh_from_db()
    assert (customer.max_instances, customer.max_vcpus, customer.max_memory_mib) == (3, 4, 2048)
    text = staff.post(reverse("staff-customer-detail", args=[customer.pk]),
                      {"max_instances": -1, "max_vcpus": 4, "max_memory_mib": 2048}).content.decode()
    assert "greater than or equal to 0" in text


def test_bulk_action_reports_each_refusal(staff, host, customer, plan, image, sent_tasks):
    customer.max_instances = 5
    customer.save()
    up = running(customer, plan, image, "up")
    pending = order_instance(customer=customer, plan=plan, image=image, hostname="pending")
    response = staff.post(reverse("staff-instance-bulk"), {"action": "stop", "instances": [up.pk, pending.pk]}, follow=True)
    text = response.content.decode()
    assert "Stop: 1 queued, 1 not: pending: Cannot stop an instance that is pending." in text
    assert Operation.objects.filter(action="stop", instance=up).exists()
    text = staff.post(reverse("staff-instance-bulk"), {"action": "stop"}, follow=True).content.decode()
    assert "Tick at least one instance." in text


def test_instance_filters(staff, customer, plan, image):
    a = HostFactory(name="a", pool="10.91.0.0/24")
    HostFactory(name="b", pool="10.92.0.0/24")
    customer.max_instances = 5
    customer.save()
    one = running(customer, plan, image, "one")
    two = running(customer, plan, image, "two")
    on_a = one if one.host == a else two
    text = staff.get(reverse("staff-instance-list"), {"host": a.pk}).content.decode()
    assert on_a.hostname in text and (two if on_a == one else one).hostname not in text
    Host.objects.filter(pk=a.pk).update(status="offline")
    text = staff.get(reverse("staff-instance-list"), {"state": "unknown"}).content.decode()
    assert f'data-instance-row="{on_a.pk}"' in text and text.count("data-instance-row=") == 1
    text = staff.get(reverse("staff-instance-list"), {"q": on_a.ipv4[0]}).content.decode()
    assert text.count("data-instance-row=") == 1


def test_operations_log_puts_failures_first_and_searches(staff, host, customer, plan, image):
    instance = running(customer, plan, image, "web")
    Operation.objects.create(instance=instance, action="reboot", state="failed", error="qemu exploded")
    Operation.objects.create(instance=instance, action="stop", state="succeeded")
    page = staff.get(reverse("staff-operations")).content.decode()
    assert page.index("qemu exploded") < page.index(">Stop<")
    assert "qemu exploded" not in staff.get(reverse("staff-operations"), {"q": "nothing-like-it"}).content.decode()
    assert "qemu exploded" in staff.get(reverse("staff-operations"), {"q": "exploded"}).content.decode()


def test_audit_log_search(staff):
    record(action="host.disabled", source="ui", message="Disabled host fra-1")
    record(action="customer.suspend", source="api", message="Suspended ACME")
    text = staff.get(reverse("staff-audit"), {"q": "fra-1"}).content.decode()
    assert "Disabled host fra-1" in text and "Suspended ACME" not in text
    text = staff.get(reverse("staff-audit"), {"source": "api"}).content.decode()
    assert "Suspended ACME" in text and "fra-1" not in text


def test_dashboard_counts(staff, host, customer, plan, image):
    running(customer, plan, image, "web")
    HostFactory(name="dead", status="offline", pool="10.63.0.0/24")
    record(action="placement.failed", source="ui", message="x", data={"hostname": "big", "kind": "container",
                                                                       "reasons": {"dead": "offline"}})
    text = staff.get(reverse("staff-dashboard")).content.decode()
    assert 'data-state-count="running">1<' in text
    assert "Hosts offline" in text and ">dead</a>" in text
    assert "<strong>dead</strong>: offline" in text


def test_metrics_need_staff_or_the_token(client, settings, host, customer, plan, image):
    running(customer, plan, image, "web")
    assert client.get("/metrics").status_code == 401
    settings.BERTH_METRICS_TOKEN = "scrape-me-0123456789"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-0123456789")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert 'berth_instances{state="running",kind="container"} 1' in text
    assert f'berth_host_up{{host="{host.name}"}} 1' in text
    assert f'berth_host_memory_allocated_bytes{{host="{host.name}"}} {plan.memory_mib * 2**20}' in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        assert line.startswith("# ") or re.fullmatch(r'[a-z_0-9]+(\{[^}]*\})? -?[0-9.e+-]+', line), line
    one = client.get(f"/metrics/hosts/{host.name}", HTTP_AUTHORIZATION="Bearer scrape-me-0123456789").content.decode()
    assert "berth_host_up" in one and "berth_instances" not in one
    assert client.get("/metrics/hosts/nope", HTTP_AUTHORIZATION="Bearer scrape-me-0123456789").status_code == 404


def test_metrics_for_a_staff_session(staff, host):
    assert staff.get("/metrics").status_code == 200


def test_retired_image_is_listed_with_enable(staff):
    ImageFactory(name="tiny", kind="vm", is_active=False)
    text = staff.get(reverse("staff-image-list")).content.decode()
    assert "retired" in text and "Enable" in text
