"""Two hosts for real (issue 6): each its own host worker and agent, reaching Redis as its own
ACL user and signing its reports. Orders spread across both; a disabled host gets no new ones;
a host whose agent stops goes offline (its instances show unknown), a heartbeat forged for it by
the other host is refused, and it comes back by itself when it restarts."""

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from panel.audit.models import AuditEntry
from panel.hosts.models import Host
from panel.hosts.selectors import instance_display_state
from panel.hosts.services import set_enabled
from panel.instances.models import Instance
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.fleet import (  # noqa: F401
    HEARTBEAT_TIMEOUT,
    REPO,
    VENV_BIN,
    fleet_fixture,
    fresh_fleet_fixture,
    wait_until,
)

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def all_running(fleet, ids, timeout=60):
    def check():
        states = dict(Instance.objects.filter(pk__in=ids).values_list("pk", "state"))
        assert "error" not in states.values(), Instance.objects.filter(pk__in=ids, state="error").values_list("error", flat=True)
        return all(s == "running" for s in states.values())

    wait_until(check, timeout, f"instances {ids} running", fleet)


def test_orders_spread_follow_disable_and_survive_a_silent_host(fresh_fleet):
    fleet = fresh_fleet
    a, b = fleet.hosts
    rows = fleet.seed(a, b)
    wait_until(lambda: Host.objects.filter(status="online", supports_containers=True).count() == 2, 30,
               "both hosts online", fleet)
    customer = CustomerFactory(max_instances=10)

    def order(name):
        return order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname=name)

    first = [order(f"spread{i}") for i in range(4)]
    all_running(fleet, [i.pk for i in first])
    assert Counter(i.host.name for i in first) == {a.name: 2, b.name: 2}
    for instance in first:  # each container really runs on the host the panel chose
        host = a if instance.host.name == a.name else b
        assert host.driver().status(instance.uuid.hex).state.value == "running"

    set_enabled(rows["hosts"][a.name], enabled=False)
    later = [order(f"after{i}") for i in range(2)]
    all_running(fleet, [i.pk for i in later])
    assert {i.host.name for i in later} == {b.name}

    fleet.stop_agent(b)
    wait_until(lambda: Host.objects.get(name=b.name).status == "offline", HEARTBEAT_TIMEOUT + 20,
               "the silent host offline", fleet)
    on_b = Instance.objects.select_related("host").filter(host__name=b.name)
    assert {i.state for i in on_b} == {"running"}  # the real state is kept …
    assert {instance_display_state(i) for i in on_b} == {"unknown"}  # … and shown as unknown
    assert AuditEntry.objects.filter(action="host.offline", target_id=str(rows["hosts"][b.name].pk)).exists()

    # Host a, with its own credential, claims to be b: the panel refuses the forged heartbeat.
    forge = (
        "from celery import Celery; from workers.config import load_host_settings; "
        "s = load_host_settings(); Celery(broker=s.redis_url).send_task("
        f"'berth.panel.host_heartbeat', kwargs={{'host_name': '{b.name}', 'facts': {{}}}}, queue='panel')"
    )
    subprocess.run([str(VENV_BIN / "python"), "-c", forge], env=fleet.host_proc_env(a), cwd=REPO, check=True, timeout=30)
    # The "panel" queue is shared with the session's test stack, whose panel worker (same
    # database) may be the one that takes the forged report: either one must refuse it.
    panel_logs = [fleet.root / "panel-worker.log", *Path("/var/tmp").glob("berth-stack-*/panel-worker.log")]
    wait_until(lambda: any(f"host_heartbeat refused: a report about host {b.name}" in log.read_text()
                           for log in panel_logs if log.exists()), 15, "the forged heartbeat refused", fleet)
    assert Host.objects.get(name=b.name).status == "offline"

    fleet.start_agent(b)
    wait_until(lambda: Host.objects.get(name=b.name).status == "online", 30, "the host back online", fleet)
    on_b = Instance.objects.select_related("host").filter(host__name=b.name)
    assert {instance_display_state(i) for i in on_b} == {"running"}
