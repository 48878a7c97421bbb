"""Operation leases (workers/leases.py) against real Redis, and the panel's reaper that judges
unfinished operations by them (panel/instances/services/reaping.py).

The stack tests (tests/stack/test_faults_worker.py) kill real workers; these pin down each
rule: one holder at a time, a dead holder taken over, nothing run after it finished or was
given up, a lost report applied, a live worker never reaped however long it works.
"""

from __future__ import annotations

import secrets
import subprocess
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from panel.instances.models import Instance, Operation
from panel.instances.services import reaping, results
from panel.instances.services.ordering import order_instance
from workers import leases


@pytest.fixture
def client():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def host_name(client):
    name = f"lease{secrets.token_hex(4)}"
    yield name
    for key in client.scan_iter(f"berth:host:{name}:*"):
        client.delete(key)


def _lease_of(client, host_name: str, operation_id: int, worker: str | None = None) -> leases.OperationLease:
    lease = leases.OperationLease(client, host_name, operation_id)
    if worker is not None:
        lease.worker = worker
    return lease


def _dead_worker() -> str:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return leases.worker_identity().rsplit(":", 2)[0] + f":{proc.pid}:1"


def test_one_holder_at_a_time_and_nothing_runs_after_it_finished(client, host_name):
    first = _lease_of(client, host_name, 7)
    assert first.claim() == leases.Verdict(leases.CLAIMED, attempt=1)
    other = _lease_of(client, host_name, 7, worker=f"{leases.worker_identity()}-other")
    busy = other.claim()
    assert busy.state == leases.BUSY and busy.holder == first.worker
    assert first.renew() and not other.renew()

    report = {"operation_id": 7, "ok": True, "power_state": "running", "detail": ""}
    assert first.finish(report)
    again = other.claim()
    assert again.state == leases.DONE and again.report == report
    assert leases.reap(client, host_name, 7, when_absent=True).state == leases.DONE


def test_a_dead_holder_is_taken_over_at_once_a_live_one_never(client, host_name):
    dead = _lease_of(client, host_name, 8, worker=_dead_worker())
    assert dead.claim().attempt == 1
    assert leases.holder_is_dead(dead.worker)
    assert not leases.holder_is_dead(leases.worker_identity())
    assert not leases.holder_is_dead("another-boot:1:1")  # unknown: wait for the lease to lapse
    taken = _lease_of(client, host_name, 8).claim()
    assert taken == leases.Verdict(leases.CLAIMED, attempt=2)


def test_a_lapsed_lease_may_be_claimed_again(client, host_name):
    holder = _lease_of(client, host_name, 9, worker="another-boot:1:1")
    holder.claim()
    client.delete(leases.operation_key(host_name, 9) + ":lease")  # not renewed for 30 s
    assert _lease_of(client, host_name, 9).claim().attempt == 2


def test_the_reaper_waits_for_a_renewed_lease_and_fences_a_lapsed_one(client, host_name):
    holder = _lease_of(client, host_name, 10)
    holder.claim()
    assert leases.reap(client, host_name, 10, when_absent=True).state == leases.BUSY
    client.delete(leases.operation_key(host_name, 10) + ":alive")  # silent for 90 s
    assert leases.reap(client, host_name, 10, when_absent=False).state == leases.ABANDONED
    # The worker, back at last, neither runs it nor overwrites the verdict.
    assert _lease_of(client, host_name, 10).claim().state == leases.ABANDONED
    assert not holder.finish({"operation_id": 10, "ok": True})
    assert client.hget(leases.operation_key(host_name, 10), "state") == b"abandoned"


def test_an_operation_no_worker_took_is_reaped_only_when_asked(client, host_name):
    assert leases.reap(client, host_name, 11, when_absent=False).state == leases.ABSENT
    assert leases.reap(client, host_name, 11, when_absent=True).state == leases.ABANDONED
    assert _lease_of(client, host_name, 11).claim().state == leases.ABANDONED


def test_outcomes_expire_long_after_any_redelivery(client, host_name):
    lease = _lease_of(client, host_name, 12)
    lease.claim()
    lease.finish({"operation_id": 12, "ok": True})
    ttl = client.ttl(leases.operation_key(host_name, 12))
    assert 3600 < ttl <= leases.KEEP_SECONDS  # the broker's visibility timeout is an hour


# --- the reaper, on the panel's rows ---------------------------------------------------------

@pytest.fixture
def ordered(customer, plan, image, host, sent_tasks, client):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="reaped")
    yield instance, instance.operations.get()
    for key in client.scan_iter(f"berth:host:{host.name}:*"):
        client.delete(key)


def _claim_as_host(client, instance: Instance, operation: Operation) -> leases.OperationLease:
    lease = _lease_of(client, instance.host.name, operation.pk)
    assert lease.claim().state == leases.CLAIMED
    results.record_operation_started(operation.pk)
    return lease


@pytest.mark.django_db
def test_a_live_worker_is_never_reaped_however_long_it_works(ordered, client):
    instance, operation = ordered
    _claim_as_host(client, instance, operation)
    Operation.objects.filter(pk=operation.pk).update(started_at=timezone.now() - timedelta(hours=5))
    assert reaping.reap_operations() == []
    operation.refresh_from_db()
    assert operation.state == Operation.State.RUNNING


@pytest.mark.django_db
def test_a_worker_gone_past_the_grace_fails_the_operation_and_the_instance(ordered, client):
    instance, operation = ordered
    _claim_as_host(client, instance, operation)
    client.delete(leases.operation_key(instance.host.name, operation.pk) + ":alive")
    assert reaping.reap_operations() == [operation.pk]
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == Operation.State.FAILED
    assert f"did not come back within {leases.REAP_GRACE_SECONDS} s" in operation.error
    assert instance.state == "error"
    assert reaping.reap_operations() == []  # judged once


@pytest.mark.django_db
def test_an_operation_never_taken_up_is_cancelled_after_the_timeout_only(ordered, client):
    instance, operation = ordered
    assert reaping.reap_operations() == []
    Operation.objects.filter(pk=operation.pk).update(
        created_at=timezone.now() - settings.BERTH_OPERATION_TIMEOUT - timedelta(seconds=1))
    assert reaping.reap_operations() == [operation.pk]
    operation.refresh_from_db()
    assert operation.state == Operation.State.FAILED and "did not take this operation up" in operation.error
    assert _lease_of(client, instance.host.name, operation.pk).claim().state == leases.ABANDONED


@pytest.mark.django_db
def test_a_report_lost_on_the_way_is_applied_from_the_lease(ordered, client):
    instance, operation = ordered
    lease = _claim_as_host(client, instance, operation)
    lease.finish({"operation_id": operation.pk, "ok": True, "power_state": "running", "detail": ""})
    # ... and the operation_finished message never reached the panel (Redis lost it).
    assert reaping.reap_operations() == [operation.pk]
    operation.refresh_from_db()
    instance.refresh_from_db()
    assert operation.state == Operation.State.SUCCEEDED
    assert instance.state == "running"
