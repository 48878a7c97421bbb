"""start/stop/reboot, suspend/unsuspend (and what a suspended owner cannot do), terminate and
change-plan through the API: 202 with an operation, 409 when illegal."""

import pytest
from django.urls import reverse

from panel.hosts.models import IpAddress
from panel.instances.models import Instance, InstanceState
from tests.api.conftest import finish
from tests.factories import PlanFactory

pytestmark = pytest.mark.django_db
S = InstanceState


def act(client, instance, action, body=None):
    return client.post(f"/api/v1/services/{instance.pk}/{action}", body, format="json")


def accepted(response, instance, state=None):
    assert response.status_code == 202, response.content
    data = response.json()
    operation = instance.operations.get(pk=data["operation"])
    assert data["service"] == instance.pk
    if state:
        assert data["state"] == state
    return operation


def test_stop_start_reboot_return_operations_to_follow(customer_api, api, running):
    stop = accepted(act(customer_api, running, "stop"), running)
    assert (stop.action, stop.source) == ("stop", "api")
    assert api.get(f"/api/v1/operations/{stop.pk}/").json()["state"] == "queued"
    finish(stop, power_state="stopped")
    start = accepted(act(customer_api, running, "start"), running)
    finish(start, power_state="running")
    reboot = accepted(act(api, running, "reboot"), running)
    finish(reboot, power_state="running")
    running.refresh_from_db()
    assert running.state == S.RUNNING
    assert api.get(f"/api/v1/operations/{reboot.pk}/").json()["state"] == "succeeded"


@pytest.mark.parametrize("action", ["start", "unsuspend"])
def test_an_illegal_action_is_409_with_the_current_state(api, running, action):
    response = act(api, running, action)
    assert response.status_code == 409
    assert response.json()["type"] == "urn:berth:problem:invalid-state"
    assert response.json()["state"] == "running"
    assert running.operations.count() == 1


def test_a_second_action_while_one_runs_is_409(api, running):
    accepted(act(api, running, "stop"), running)
    response = act(api, running, "reboot")
    assert response.status_code == 409
    assert response.json()["type"] == "urn:berth:problem:operation-in-progress"


def test_suspend_stops_it_and_the_owner_can_neither_start_it_nor_open_its_console(
    api, customer_api, running, client
):
    op = accepted(act(api, running, "suspend", {"reason": "unpaid invoice 42"}), running)
    running.refresh_from_db()
    assert running.suspended_reason == "unpaid invoice 42" and running.state_before_suspend == S.RUNNING
    finish(op, power_state="stopped")
    running.refresh_from_db()
    assert running.state == S.SUSPENDED

    assert act(customer_api, running, "start").status_code == 409
    assert act(customer_api, running, "reboot").status_code == 409
    console = customer_api.post(f"/api/v1/services/{running.pk}/console/")
    assert console.status_code == 409 and console.json()["state"] == "suspended"
    assert api.post(f"/api/v1/services/{running.pk}/console/").status_code == 409
    # The web panel refuses the same things (the console consumer: see test_console.py).
    client.force_login(running.customer.user)
    response = client.post(reverse("instance-action", args=[running.pk, "start"]),
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert not running.operations.filter(action="start").exists()

    unsuspend = accepted(act(api, running, "unsuspend"), running)
    assert unsuspend.params == {"start": True}
    finish(unsuspend, power_state="running")
    running.refresh_from_db()
    assert running.state == S.RUNNING and running.suspended_reason == ""


def test_suspend_without_a_body_and_with_a_bad_one(api, running):
    assert act(api, running, "suspend", {"reason": 5}).status_code == 400
    response = api.post(f"/api/v1/services/{running.pk}/suspend")
    accepted(response, running)


def test_terminate_frees_resources_and_keeps_the_row(api, customer_api, running):
    op = accepted(act(customer_api, running, "terminate"), running, state="terminating")
    finish(op)
    instance = Instance.objects.get(pk=running.pk)
    assert instance.state == S.TERMINATED and instance.terminated_at
    assert not IpAddress.objects.filter(instance=instance).exists()
    data = api.get(f"/api/v1/services/{running.pk}/").json()
    assert data["state"] == "terminated" and data["ipv4"] == []
    assert act(api, running, "terminate").status_code == 409
    assert api.get("/api/v1/services/?state=terminated").json()["count"] == 1


def test_change_plan_same_kind_only_and_422_without_room(api, running, customer):
    bigger = PlanFactory(memory_mib=512)
    op = accepted(act(api, running, "change-plan", {"plan": bigger.pk}), running)
    assert op.params == {"plan": bigger.pk, "previous_plan": running.plan_id}
    running.refresh_from_db()
    assert running.plan == bigger
    finish(op, power_state="running")

    vm_plan = PlanFactory(kind="vm")
    response = act(api, running, "change-plan", {"plan": vm_plan.pk})
    assert response.status_code == 400 and "plan" in response.json()["errors"]
    customer.max_memory_mib = 10**6
    customer.save()
    huge = PlanFactory(memory_mib=100_000)
    response = act(api, running, "change-plan", {"plan": huge.pk})
    assert response.status_code == 422 and response.json()["type"] == "urn:berth:problem:no-capacity"
    for bad in ({}, {"plan": "2"}, {"plan": None}, {"plan": 2**64}):
        assert act(api, running, "change-plan", bad).status_code == 400
    running.refresh_from_db()
    assert running.plan == bigger
