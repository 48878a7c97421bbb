"""Usage metering: samples in from host agents, any period answered exactly (and additively)."""

from datetime import UTC, datetime, timedelta

import pytest

from panel.instances.models import Instance, InstanceState
from panel.instances.states import transition
from panel.usage.models import InstanceStateChange, UsageSample
from panel.usage.services import record_samples, usage_for_period
from panel.usage.tasks import usage_samples
from tests.factories import HostFactory

pytestmark = pytest.mark.django_db
S = InstanceState
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def metered(running):
    """A service created at T0, running from T0+10 s to T0+100 s, stopped, running again from
    T0+200 s to T0+400 s (its counters restart from zero then), then terminated."""
    Instance.objects.filter(pk=running.pk).update(created_at=T0)
    InstanceStateChange.objects.filter(instance=running).delete()
    for t, before, after in [(0, S.PENDING, S.PROVISIONING), (10, S.PROVISIONING, S.RUNNING),
                             (100, S.RUNNING, S.STOPPED), (200, S.STOPPED, S.RUNNING),
                             (400, S.RUNNING, S.TERMINATING), (410, S.TERMINATING, S.TERMINATED)]:
        InstanceStateChange.objects.create(instance=running, from_state=before, to_state=after, at=at(t))
    # cumulative since each start: 1 cpu-second and 1000 rx bytes per 10 s while running
    samples = [(40, 3, 3000, 100), (70, 6, 6000, 120), (100, 9, 9000, 120),
               (230, 3, 3000, 50), (260, 6, 6000, 60), (290, 9, 9000, 70)]
    for t, cpu, rx, mem in samples:
        UsageSample.objects.create(instance=running, at=at(t), cpu_seconds=cpu, memory_bytes=mem * MIB,
                                   net_rx_bytes=rx, net_tx_bytes=rx // 10, disk_used_bytes=t * 1000)
    running.refresh_from_db()
    return running


def test_running_seconds_come_from_the_state_history(metered):
    assert usage_for_period(instance=metered, start=at(0), end=at(1000)).running_seconds == 90 + 200
    assert usage_for_period(instance=metered, start=at(50), end=at(250)).running_seconds == 50 + 50
    assert usage_for_period(instance=metered, start=at(-100), end=at(5)).running_seconds == 0


def test_counters_add_up_with_a_restart_in_between(metered):
    whole = usage_for_period(instance=metered, start=at(0), end=at(1000))
    # first run: 9 s since its start at T0+10; second run: 9 s counted again from zero
    assert whole.cpu_seconds == pytest.approx(18)
    assert whole.net_rx_bytes == 18000 and whole.net_tx_bytes == 1800
    assert whole.disk_used_bytes == 290 * 1000


def test_a_period_takes_its_share_of_each_interval(metered):
    usage = usage_for_period(instance=metered, start=at(40), end=at(55))
    assert usage.cpu_seconds == pytest.approx(1.5)
    assert usage.net_rx_bytes == 1500


@pytest.mark.parametrize("cuts", [(0, 33, 77, 230, 1000), (0, 10, 100, 200, 400, 1000), (0, 1, 2, 3, 999)])
def test_adjacent_periods_add_up_exactly(metered, cuts):
    whole = usage_for_period(instance=metered, start=at(cuts[0]), end=at(cuts[-1]))
    parts = [usage_for_period(instance=metered, start=at(a), end=at(b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    for name in ("running_seconds", "cpu_seconds", "memory_mib_hours"):
        assert sum(getattr(p, name) for p in parts) == pytest.approx(getattr(whole, name))
    assert abs(sum(p.net_rx_bytes for p in parts) - whole.net_rx_bytes) <= len(parts)


def test_memory_is_integrated_between_samples_but_not_across_gaps(metered):
    usage = usage_for_period(instance=metered, start=at(0), end=at(1000))
    # 40→70: avg 110 MiB ×30 s, 70→100: 120×30, 230→260: 55×30, 260→290: 65×30; 100→230 is a gap
    expected = (110 + 120 + 55 + 65) * 30 / 3600
    assert usage.memory_mib_hours == pytest.approx(expected)


def test_the_api_answers_a_period(api, metered):
    response = api.get(f"/api/v1/services/{metered.pk}/usage/",
                       {"from": "2025-01-01T12:00:00Z", "to": "2025-01-01T12:16:40+00:00"})
    assert response.status_code == 200
    data = response.json()
    assert set(data) >= {"running_seconds", "cpu_seconds", "memory_mib_hours", "net_rx_bytes",
                         "net_tx_bytes", "disk_used_bytes"}
    assert data["running_seconds"] == 290 and data["net_rx_bytes"] == 18000
    assert data["cpu_seconds"] == pytest.approx(18)


def test_the_end_is_clamped_to_now_and_defaults_cover_the_whole_life(api, running):
    data = api.get(f"/api/v1/services/{running.pk}/usage/?to=2999-01-01T00:00:00Z").json()
    assert data["to"] < "2999" and 0 <= data["running_seconds"] < 60
    assert api.get(f"/api/v1/services/{running.pk}/usage/").status_code == 200


def test_transition_records_the_history(running):
    transition(running.pk, S.STOPPED)
    assert list(InstanceStateChange.objects.filter(instance=running).values_list("from_state", "to_state")) == [
        ("pending", "provisioning"), ("provisioning", "running"), ("running", "stopped")]


def test_samples_from_the_agent_are_stored_once_and_only_for_its_own_instances(running):
    other_host = HostFactory(pool="10.98.0.0/24")
    item = {"uuid": running.uuid.hex, "cpu_seconds": 1.5, "memory_bytes": 10, "net_rx_bytes": 2,
            "net_tx_bytes": 3, "disk_used_bytes": 4, "at": "2025-01-01T12:00:00Z"}
    assert usage_samples(running.host.name, [item, {**item, "at": 1735732830.0}]) == 2
    assert usage_samples(running.host.name, [item]) == 1  # a retry
    assert record_samples(host_name=other_host.name, samples=[{**item, "at": "2025-01-01T13:00:00"}]) == 0
    bad = [{**item, "uuid": "nope"}, {**item, "cpu_seconds": "x"}, {**item, "at": None},
           {**item, "memory_bytes": -1}, {"uuid": running.uuid.hex}]
    assert record_samples(host_name=running.host.name, samples=bad) == 0
    assert UsageSample.objects.filter(instance=running).count() == 2
    stored = UsageSample.objects.filter(instance=running).order_by("at").last()
    assert stored.at == datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC)
