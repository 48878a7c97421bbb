"""While the database is away: a clear 503 (HTML page or problem+json, with Retry-After) from
every place an outage can surface, and the panel's tasks retry instead of losing hosts'
reports. The real outage (a cut connection) is tests/stack/test_faults_outages.py; these pin
down each path through the code.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import InterfaceError, OperationalError
from rest_framework.test import APIClient

from panel.api.services.tokens import create_token
from panel.hosts import tasks as host_tasks
from panel.instances import tasks as instance_tasks

pytestmark = pytest.mark.django_db

DOWN = OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')


def _assert_clear_page(response) -> None:
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert response["Cache-Control"] == "no-store"
    body = response.content.decode()
    assert "Temporarily unavailable" in body and "Nothing was changed" in body
    assert "Traceback" not in body and "5432" not in body  # no internals


def test_a_page_whose_view_hits_the_outage_is_a_503_page(client, customer, monkeypatch):
    client.force_login(customer.user)

    def down(*args, **kwargs):
        raise DOWN

    monkeypatch.setattr("panel.web.views.visible_instances", down)
    _assert_clear_page(client.get("/"))


@pytest.mark.parametrize("error", [DOWN, InterfaceError("connection already closed")])
def test_an_api_call_that_hits_the_outage_is_a_503_problem(customer, monkeypatch, error):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(name='b', scope='billing')[1]}")

    def down(*args, **kwargs):
        raise error

    monkeypatch.setattr("panel.api.selectors.filter_services", down)
    response = api.get("/api/v1/services/")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "30"
    problem = response.json()
    assert problem["type"] == "urn:berth:problem:database-unavailable"
    assert problem["status"] == 503 and "try again" in problem["detail"]


def test_an_outage_in_a_middleware_after_the_view_is_a_503_too(client, customer, monkeypatch):
    """The session is saved after the view, by a middleware: Django turns what it raises into
    a 500 before any outer middleware sees it; that 500 must still come out as the 503."""
    client.force_login(customer.user)
    client.raise_request_exception = False

    def down(self, request, response):
        raise DOWN

    monkeypatch.setattr(SessionMiddleware, "process_response", down)
    _assert_clear_page(client.get("/"))
    api = client.get("/api/v1/plans/", HTTP_AUTHORIZATION=f"Bearer {create_token(name='b', scope='billing')[1]}")
    assert api.status_code == 503 and api["Content-Type"] == "application/problem+json"


def test_other_errors_stay_what_they_are(client, customer, monkeypatch):
    client.force_login(customer.user)
    client.raise_request_exception = False

    def bug(*args, **kwargs):
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr("panel.web.views.visible_instances", bug)
    assert client.get("/").status_code == 500


# --- the panel worker's tasks ------------------------------------------------------------

@pytest.mark.parametrize("task", [
    instance_tasks.operation_started, instance_tasks.operation_progress,
    instance_tasks.operation_finished, instance_tasks.power_state, host_tasks.placement_failed,
])
def test_reports_from_hosts_retry_on_database_errors(task):
    assert OperationalError in task.autoretry_for and InterfaceError in task.autoretry_for
    assert task.retry_backoff and task.max_retries


def test_a_late_power_state_gives_up_sooner_than_an_operation_result():
    # Applied late, "stopped" could undo a start that happened since; results stay true.
    assert instance_tasks.power_state.max_retries < instance_tasks.operation_finished.max_retries
    assert instance_tasks.power_state.retry_backoff_max <= 10


def test_an_operation_result_retried_through_an_outage_lands(monkeypatch, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    calls = []

    def flaky(operation_id, **kwargs):
        calls.append(operation_id)
        if len(calls) < 3:
            raise DOWN

    monkeypatch.setattr("panel.instances.services.results.record_operation_finished", flaky)
    result = instance_tasks.operation_finished.apply(kwargs={"operation_id": 5, "ok": True})
    assert result.successful() and calls == [5, 5, 5]


def test_heartbeats_and_reconcile_reports_are_dropped_not_retried(monkeypatch, caplog):
    def down(**kwargs):
        raise DOWN

    monkeypatch.setattr("panel.hosts.services.record_heartbeat", down)
    monkeypatch.setattr("panel.instances.services.reconcile.reconcile_host", down)
    host_tasks.host_heartbeat.apply(kwargs={"host_name": "h1", "facts": {}}).get()
    assert instance_tasks.reconcile_report.apply(kwargs={"host_name": "h1", "instances": []}).get() == []
    assert "heartbeat of h1 dropped" in caplog.text and "reconcile report of h1 dropped" in caplog.text


def test_a_silent_host_is_offline_within_30_seconds_by_configuration():
    every = settings.CELERY_BEAT_SCHEDULE["expire-heartbeats"]["schedule"]
    assert settings.BERTH_HEARTBEAT_TIMEOUT.total_seconds() + every <= 30
    assert settings.CELERY_BEAT_SCHEDULE["reap-stale-operations"]["schedule"] <= 30
