"""Two actions on one instance at once, through the API, in threads against PostgreSQL: one
wins, the other gets a clear 409, and the final state is right.

The requests are made to overlap for certain: the test holds the instance's row lock while
they start, waits until PostgreSQL shows both blocked on it, then lets go.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from panel.api.services.tokens import create_token
from panel.hosts.models import IpAddress
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def instance(customer, plan, image, host, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="race")
    _host_reports(instance.operations.get(), power_state="running")
    instance.refresh_from_db()
    assert instance.state == "running"
    return instance


@pytest.fixture
def billing_key(db):
    return create_token(name="billing", scope="billing")[1]


def _host_reports(operation: Operation, *, ok: bool = True, power_state: str | None = None) -> None:
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=ok, power_state=power_state)


def _blocked_on_locks() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction PostgreSQL keeps showing its first snapshot of the statistics.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def _at_once(instance: Instance, key: str, actions: list[str]) -> list[tuple[str, int, dict]]:
    """POST each action from its own thread while the row is locked; all of them are waiting
    on the lock before it is released. Returns (action, status, body) in the order given."""
    answers: list[tuple[str, int, dict] | None] = [None] * len(actions)

    def post(index: int, action: str) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        response = client.post(f"/api/v1/services/{instance.pk}/{action}", format="json")
        answers[index] = (action, response.status_code, response.json())
        connection.close()

    threads = [threading.Thread(target=post, args=(i, a)) for i, a in enumerate(actions)]
    with transaction.atomic():
        Instance.objects.select_for_update().get(pk=instance.pk)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while _blocked_on_locks() < len(actions):
            assert time.monotonic() < deadline, f"the requests never queued on the row lock: {answers}"
            time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=30)
    assert all(answers), answers
    return answers  # type: ignore[return-value]


def test_terminate_twice_at_once_one_wins_the_other_is_a_clear_409(instance, billing_key):
    answers = _at_once(instance, billing_key, ["terminate", "terminate"])
    statuses = sorted(status for _, status, _ in answers)
    assert statuses == [202, 409], answers
    [(_, _, loser)] = [a for a in answers if a[1] == 409]
    assert loser["type"] == "urn:berth:problem:invalid-state"
    assert "terminating" in loser["detail"]
    [terminate] = Operation.objects.filter(instance=instance, action="terminate")
    _host_reports(terminate, power_state="absent")
    instance.refresh_from_db()
    assert instance.state == "terminated"
    assert not IpAddress.objects.filter(instance=instance).exists()


def test_stop_while_starting_start_wins_and_stop_is_refused(instance, billing_key):
    assert _host_reports_stop(instance).state == "succeeded"
    answers = _at_once(instance, billing_key, ["stop", "start"])
    by_action = {action: (status, body) for action, status, body in answers}
    assert by_action["start"][0] == 202, answers
    assert by_action["stop"][0] == 409, answers
    assert by_action["stop"][1]["type"] in ("urn:berth:problem:invalid-state",
                                            "urn:berth:problem:operation-in-progress")
    [start] = Operation.objects.filter(instance=instance, action="start")
    _host_reports(start, power_state="running")
    instance.refresh_from_db()
    assert instance.state == "running"


def _host_reports_stop(instance: Instance) -> Operation:
    from panel.instances.services.actions import request_action  # noqa: PLC0415

    operation = request_action(instance=instance, action="stop")
    _host_reports(operation, power_state="stopped")
    operation.refresh_from_db()
    return operation


@pytest.mark.parametrize("actions", [["stop", "reboot"], ["reboot", "stop"], ["stop"] * 6])
def test_of_many_actions_at_once_exactly_one_is_accepted(instance, billing_key, actions):
    answers = _at_once(instance, billing_key, actions)
    accepted = [a for a in answers if a[1] == 202]
    assert len(accepted) == 1, answers
    refused = [a for a in answers if a[1] != 202]
    assert {status for _, status, _ in refused} == {409}
    assert all(body["detail"] for _, _, body in refused)
    assert Operation.objects.filter(instance=instance).exclude(action="create").count() == 1
    winner = accepted[0][0]
    operation = Operation.objects.get(instance=instance, action=winner)
    _host_reports(operation, power_state="stopped" if winner == "stop" else "running")
    instance.refresh_from_db()
    assert instance.state == ("stopped" if winner == "stop" else "running")
