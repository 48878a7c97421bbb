"""Hosts: heartbeats (capacity, graph points, bad reports), going offline after a silence and
coming back, instances shown as unknown meanwhile, the admin's switches, enrolment checks."""

from datetime import timedelta

import pytest
from django.utils import timezone

from panel.audit.models import AuditEntry
from panel.hosts import services
from panel.hosts.models import Host, HostSample
from panel.hosts.selectors import fleet_capacity, fleet_totals, instance_display_state
from panel.hosts.tasks import host_heartbeat
from panel.instances.services.ordering import order_instance
from panel.instances.states import transition
from tests.factories import HostFactory, PlanFactory

pytestmark = pytest.mark.django_db

FACTS = {
    "cpus": 8, "memory_mib": 16000, "memory_available_mib": 12000, "disk_gib": 200,
    "disk_free_gib": 150, "load": [0.5, 0.4, 0.3], "containers": True, "vms": True,
    "virt_type": "qemu", "virt_reason": "KVM probe guest did not boot; using TCG",
    "instances": {"running": 3, "stopped": 1}, "kinds": ["container", "vm"],
}


def test_heartbeat_records_capacity_and_a_graph_point(host):
    host_heartbeat(host.name, FACTS)
    host.refresh_from_db()
    assert (host.cpus, host.memory_mib, host.disk_gib, host.virt_type) == (8, 16000, 200, "qemu")
    assert host.status == Host.Status.ONLINE and host.supports_vms
    assert host.facts["kinds"] == ["container", "vm"]
    [sample] = HostSample.objects.filter(host=host)
    assert (sample.load1, sample.memory_used_mib, sample.disk_used_gib, sample.instances_running) == (0.5, 4000, 50, 3)
    host_heartbeat(host.name, FACTS)  # within the sample interval: no second point
    assert HostSample.objects.filter(host=host).count() == 1


def test_heartbeat_keeps_the_orphans_reconcile_found(host):
    Host.objects.filter(pk=host.pk).update(facts={"orphans": ["abc"]})
    host_heartbeat(host.name, FACTS)
    host.refresh_from_db()
    assert host.facts["orphans"] == ["abc"]


@pytest.mark.parametrize("facts", [{"cpus": "many", "memory_mib": None, "load": "high"}, {"cpus": -3}])
def test_malformed_heartbeat_changes_nothing_it_cannot_read(host, facts):
    host_heartbeat(host.name, facts)
    host.refresh_from_db()
    assert host.cpus == 4 and host.memory_mib == 4096  # the factory's values are kept
    assert host.status == Host.Status.ONLINE


def test_heartbeat_of_an_unknown_host_is_ignored():
    assert services.record_heartbeat(host_name="ghost", facts=FACTS) is None


def test_silent_host_goes_offline_its_instances_unknown_and_comes_back(customer, plan, image, host, settings):
    settings.BERTH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="web")
    transition(instance.pk, "provisioning")
    transition(instance.pk, "running")
    Host.objects.filter(pk=host.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=31))
    assert services.expire_heartbeats() == [host.name]
    instance.refresh_from_db()
    assert instance.state == "running"  # the real state is kept …
    assert instance_display_state(instance) == "unknown"  # … and shown as unknown
    assert AuditEntry.objects.filter(action="host.offline").exists()
    host_heartbeat(host.name, FACTS)
    instance.refresh_from_db()
    assert instance.host.status == "online" and instance_display_state(instance) == "running"


def test_a_host_heard_recently_stays_online(host, settings):
    settings.BERTH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
    Host.objects.filter(pk=host.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=25))
    assert services.expire_heartbeats() == []


def test_pending_instances_are_not_shown_unknown(customer, plan, image, host):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="web")
    Host.objects.filter(pk=host.pk).update(status=Host.Status.OFFLINE)
    instance.refresh_from_db()
    assert instance_display_state(instance) == "pending"


def test_old_samples_are_pruned(host):
    HostSample.objects.create(host=host, at=timezone.now() - timedelta(hours=25))
    HostSample.objects.create(host=host, at=timezone.now())
    services.expire_heartbeats()
    assert HostSample.objects.count() == 1


def test_switches_are_audited_and_drain_says_what_is_left(customer, plan, image, host):
    order_instance(customer=customer, plan=plan, image=image, hostname="web")
    services.set_enabled(host, enabled=False)
    host = services.set_draining(host, draining=True)
    assert not host.is_enabled and host.is_draining and not host.accepts_instances
    entry = AuditEntry.objects.get(action="host.drain")
    assert "1 still on it" in entry.message
    assert AuditEntry.objects.filter(action="host.disabled").exists()


def test_capacity_counts_overcommit_and_only_usable_hosts(customer, image):
    a = HostFactory(name="a", cpus=2, cpu_overcommit=4, memory_mib=1000, pool="10.91.0.0/24")
    HostFactory(name="b", cpus=2, memory_mib=1000, is_enabled=False, pool="10.92.0.0/24")
    order_instance(customer=customer, plan=PlanFactory(vcpus=2, memory_mib=250), image=image, hostname="x")
    caps = {c.host.name: c for c in fleet_capacity()}
    assert (caps["a"].vcpus.used, caps["a"].vcpus.limit, caps["a"].vcpus.percent) == (2, 8.0, 25)
    assert (caps["a"].ips.used, caps["a"].ips.limit) == (1, 253)
    totals = fleet_totals(list(caps.values()))
    assert (totals["memory"].used, totals["memory"].limit) == (250, 1000.0)  # b is disabled
    assert caps["a"].host == a


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"name": "Bad_Name"}, "name", "lowercase letters"),
        ({"network": "10.1.2.3/24"}, "network", "CIDR"),
        ({"network": "10.99.0.128/25"}, "network", "overlaps host"),
        ({"network": "10.1.2.0/31"}, "network", "at least a /30"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge", "1-15"),
    ],
)
def test_enrolment_refuses_clashes_with_a_clear_message(host, kwargs, field, message):
    args = {"name": "new", "network": "10.50.0.0/24", "bridge": "berth9", **kwargs}
    with pytest.raises(services.HostError, match=message) as exc:
        services.check_new_host(**args)
    assert exc.value.field == field


def test_uid_base_suggestion_clears_every_host(host):
    assert services.suggest_uid_base() == host.uid_base + host.uid_slots * 65536


def test_a_reconcile_listed_before_an_instance_settled_leaves_it_alone(customer, plan, image, host):
    """A host lists its instances while a create runs; its report arrives after the create has
    finished. The new container, missing from that older listing, is not "gone"."""
    from panel.instances.services import results
    from panel.instances.tasks import reconcile_report

    asked = timezone.now()
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="fresh")
    operation = instance.operations.get()
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=True, power_state="running")
    reconcile_report(host.name, [], requested_at=asked.isoformat())
    instance.refresh_from_db()
    assert instance.state == "running"
    # a listing made after it settled is believed
    reconcile_report(host.name, [], requested_at=timezone.now().isoformat())
    instance.refresh_from_db()
    assert instance.state == "error" and "no longer on its host" in instance.error
