"""POST/GET services: ordering, idempotency by external_id, reads, lists, other customers."""

import json
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer

from panel.accounts.models import Customer
from panel.api.serializers import ServiceSerializer
from panel.api.services.tokens import create_token
from panel.instances.models import Instance, Operation
from panel.instances.services.actions import request_action
from tests.api.conftest import client_for, finish
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db
CONTRACT_FIELDS = {"id", "external_id", "customer", "kind", "plan", "image", "hostname", "state",
                   "host", "ipv4", "created_at", "updated_at"}


@pytest.fixture
def body(customer, plan, image, host):
    customer.external_id = "cust-1"
    customer.save()
    return {"external_id": "svc-9", "customer": customer.pk, "plan": plan.pk, "image": image.pk,
            "hostname": "Web-1"}


def test_create_orders_a_service_and_queues_it_on_its_host(
    api, body, sent_tasks, host, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/services/", body, format="json")
    assert response.status_code == 202
    data = response.json()
    instance = Instance.objects.get()
    operation = instance.operations.get()
    assert {"id", "external_id", "state", "operation"} <= set(data)
    assert (data["id"], data["external_id"], data["state"], data["operation"]) == (
        instance.pk, "svc-9", "pending", operation.pk)
    assert data["hostname"] == "web-1" and data["host"] == host.name and len(data["ipv4"]) == 1
    assert operation.source == "api" and operation.action == "create"
    assert [t["queue"] for t in sent_tasks] == [f"host.{host.name}"]


def test_customer_can_be_given_by_its_external_id(api, body, sent_tasks):
    response = api.post("/api/v1/services/", {**body, "customer": "cust-1"}, format="json")
    assert response.status_code == 202
    assert response.json()["customer"] == body["customer"]


def test_a_retry_with_the_same_body_returns_the_same_service(
    api, body, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post("/api/v1/services/", body, format="json").json()
        retry = api.post("/api/v1/services/", {**body, "hostname": "web-1"}, format="json")
    assert retry.status_code == 202  # still pending
    assert retry.json()["id"] == first["id"] and retry.json()["operation"] == first["operation"]
    finish(Operation.objects.get(pk=first["operation"]), power_state="running")
    later = api.post("/api/v1/services/", {**body, "customer": "cust-1"}, format="json")
    assert later.status_code == 200 and later.json()["state"] == "running"
    assert Instance.objects.count() == 1 and len(sent_tasks) == 1


def test_a_retry_after_a_plan_change_is_still_the_same_order(api, body, sent_tasks, host):
    first = api.post("/api/v1/services/", body, format="json").json()
    finish(Operation.objects.get(pk=first["operation"]), power_state="running")
    bigger = PlanFactory(memory_mib=512)
    assert api.post(f"/api/v1/services/{first['id']}/change-plan", {"plan": bigger.pk},
                    format="json").status_code == 202
    assert api.post("/api/v1/services/", body, format="json").status_code == 200


@pytest.mark.parametrize("change", [
    {"hostname": "other"}, {"plan": "new-plan"}, {"image": "new-image"}, {"customer": "new-customer"},
])
def test_the_same_external_id_with_another_body_is_409(api, body, sent_tasks, change):
    api.post("/api/v1/services/", body, format="json")
    values = {"new-plan": PlanFactory().pk, "new-image": ImageFactory().pk,
              "new-customer": CustomerFactory().pk}
    changed = {k: values.get(v, v) for k, v in change.items()}
    response = api.post("/api/v1/services/", {**body, **changed}, format="json")
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:berth:problem:idempotency-conflict"
    assert set(problem["errors"]) == set(change) and problem["service"] == Instance.objects.get().pk
    assert Instance.objects.count() == 1


def test_quota_and_capacity_are_422(api, body, sent_tasks, customer):
    customer.max_instances = 0
    customer.save()
    response = api.post("/api/v1/services/", body, format="json")
    assert response.status_code == 422 and response.json()["type"] == "urn:berth:problem:quota-exceeded"
    customer.max_instances = 10
    customer.save()
    huge = PlanFactory(vcpus=1, memory_mib=8192)
    customer.max_memory_mib = 100000
    customer.save()
    response = api.post("/api/v1/services/", {**body, "plan": huge.pk}, format="json")
    assert response.status_code == 422 and response.json()["type"] == "urn:berth:problem:no-capacity"
    assert "h0" not in response.json()["detail"]  # host names stay with the admin
    assert not Instance.objects.exists()


def test_an_image_of_the_other_kind_is_400(api, body):
    vm = ImageFactory(kind="vm")
    response = api.post("/api/v1/services/", {**body, "image": vm.pk}, format="json")
    assert response.status_code == 400 and "image" in response.json()["errors"]


def test_get_returns_the_contract_fields(api, running):
    response = api.get(f"/api/v1/services/{running.pk}/")
    assert response.status_code == 200
    data = response.json()
    assert set(data) >= CONTRACT_FIELDS
    assert data["state"] == "running" and data["customer"] == running.customer_id
    assert data["kind"] == "container" and data["plan"] == running.plan_id
    assert data["ipv4"] == running.ipv4 and data["host"] == running.host.name


def test_get_shows_what_the_list_shows_in_one_query(api, running, django_assert_num_queries):
    """GET reads a lean copy of the service (selectors.read_service); it must not differ."""
    running.customer.external_id = "cust-7"
    running.customer.save()
    listed = api.get(f"/api/v1/services/?external_id={running.external_id}").json()["results"]
    with django_assert_num_queries(1):  # the service, its host, customer and addresses
        detail = api.get(f"/api/v1/services/{running.pk}/").json()
    assert [detail] == listed
    assert detail["ipv4"] and detail["host"] and detail["customer_external_id"] == "cust-7"


def _as_drf_shows_it(instance: Instance) -> dict:
    """The service through DRF's own field-by-field serialization, which ServiceSerializer's
    hand-written to_representation replaces and must equal; as JSON, as a client reads it."""
    serializer = ServiceSerializer(instance)
    return json.loads(JSONRenderer().render(serializers.Serializer.to_representation(serializer, instance)))


SHAPES = {
    "running": {},
    "unplaced": {"host": None, "started_at": None, "state": "pending", "external_id": None},
    "terminated": {"state": "terminated", "terminated_at": datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
                   "error": "the host is gone"},
    "application": {"app_command": ["nginx", "-g", "daemon off;"], "suspended_reason": "unpaid"},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_get_shows_a_service_as_drf_would_and_as_the_list_does(api, customer_api, running, image, shape):
    changes = dict(SHAPES[shape])
    if changes.get("host", "kept") is None or changes.get("state") == "terminated":
        running.ip_addresses.all().delete()
    if shape == "application":
        changes["previous_image"] = ImageFactory(name="busybox-old")
    Instance.objects.filter(pk=running.pk).update(**changes)
    expected = _as_drf_shows_it(Instance.objects.select_related("host", "customer").get(pk=running.pk))
    for client in (api, customer_api):
        detail = client.get(f"/api/v1/services/{running.pk}/").json()
        listed = client.get(f"/api/v1/services/?external_id={running.external_id}" if changes.get(
            "external_id", "kept") is not None else "/api/v1/services/").json()["results"]
        assert detail == expected
        assert listed == [expected]
    assert expected["uuid"] == running.uuid.hex and set(expected) >= CONTRACT_FIELDS
    assert (expected["host"] is None) == (shape == "unplaced")
    assert bool(expected["ipv4"]) == (shape in ("running", "application"))


def test_a_customer_token_sees_its_own_service_and_nobody_elses(customer_api, stranger_api, running):
    assert customer_api.get(f"/api/v1/services/{running.pk}/").status_code == 200
    assert customer_api.get("/api/v1/services/").json()["count"] == 1
    assert stranger_api.get("/api/v1/services/").json()["count"] == 0
    assert stranger_api.get(f"/api/v1/services/?customer={running.customer_id}").json()["count"] == 0


@pytest.mark.parametrize("method,path", [
    ("get", "/api/v1/services/{id}/"),
    ("post", "/api/v1/services/{id}/start"),
    ("post", "/api/v1/services/{id}/stop"),
    ("post", "/api/v1/services/{id}/reboot"),
    ("post", "/api/v1/services/{id}/terminate"),
    ("post", "/api/v1/services/{id}/sso"),
    ("post", "/api/v1/services/{id}/console/"),
    ("get", "/api/v1/services/{id}/usage/"),
    ("get", "/api/v1/operations/{op}/"),
])
def test_another_customers_service_is_404(stranger_api, running, method, path):
    op = running.operations.get().pk
    response = getattr(stranger_api, method)(path.format(id=running.pk, op=op))
    assert response.status_code == 404
    assert response.json()["type"] == "urn:berth:problem:not-found"
    running.refresh_from_db()
    assert running.state == "running" and running.operations.count() == 1


def test_lists_filter_and_paginate(api, customer, other_customer, plan, image, sent_tasks):
    HostFactory(cpus=64, memory_mib=65536)
    from panel.instances.services.ordering import order_instance

    made = [order_instance(customer=customer, plan=plan, image=image, hostname=f"n{i}",
                           external_id=f"e{i}") for i in range(3)]
    order_instance(customer=other_customer, plan=plan, image=image, hostname="o")
    finish(made[0].operations.get(), power_state="running")
    customer.external_id = "ext-c"
    customer.save()

    page = api.get("/api/v1/services/?limit=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    second = api.get("/api/v1/services/?limit=2&offset=2").json()
    ids = {r["id"] for r in page["results"]} | {r["id"] for r in second["results"]}
    assert len(ids) == 4
    assert [r["id"] for r in api.get("/api/v1/services/?external_id=e1").json()["results"]] == [made[1].pk]
    by_ext = api.get("/api/v1/services/?customer=ext-c").json()
    by_id = api.get(f"/api/v1/services/?customer={customer.pk}").json()
    assert by_ext["count"] == by_id["count"] == 3
    running = api.get("/api/v1/services/?state=running").json()
    assert [r["id"] for r in running["results"]] == [made[0].pk]
    assert api.get("/api/v1/services/?customer=nobody").json()["count"] == 0


def test_operations_can_be_followed(api, customer_api, running):
    stop = request_action(instance=running, action="stop")
    data = customer_api.get(f"/api/v1/operations/{stop.pk}/").json()
    assert data == {
        "id": stop.pk, "action": "stop", "state": "queued", "error": "", "progress": "",
        "source": "ui", "created_at": data["created_at"], "started_at": None, "finished_at": None,
        "service": running.pk,
    }
    finish(stop, ok=False, error="disk on fire", power_state="running")
    data = api.get(f"/api/v1/operations/{stop.pk}/").json()
    assert data["state"] == "failed" and data["error"] == "disk on fire" and data["finished_at"]


# --- concurrent retries against PostgreSQL ---------------------------------------------------

def _post_concurrently(bodies, key):
    results, barrier = [None] * len(bodies), threading.Barrier(len(bodies))

    def run(index):
        try:
            client = client_for(key)
            barrier.wait()
            response = client.post("/api/v1/services/", bodies[index], format="json")
            results[index] = (response.status_code, response.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_make_one_instance(sent_tasks):
    if connection.vendor != "postgresql":
        pytest.skip("row locks only mean something on PostgreSQL")
    HostFactory(cpus=2, memory_mib=512)  # room for two: a second instance would still fit
    customer, plan, image = CustomerFactory(), PlanFactory(), ImageFactory()
    key = create_token(name="b", scope="billing")[1]
    body = {"external_id": "race", "customer": customer.pk, "plan": plan.pk, "image": image.pk,
            "hostname": "web"}
    results = _post_concurrently([body] * 6, key)
    assert Instance.objects.count() == 1
    instance = Instance.objects.get()
    assert sorted({code for code, _ in results}) == [202]
    assert {data["id"] for _, data in results} == {instance.pk}


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_under_different_customers_conflict(sent_tasks):
    if connection.vendor != "postgresql":
        pytest.skip("row locks only mean something on PostgreSQL")
    HostFactory(cpus=8, memory_mib=4096)
    plan, image = PlanFactory(), ImageFactory()
    customers = [CustomerFactory() for _ in range(4)]
    key = create_token(name="b", scope="billing")[1]
    bodies = [{"external_id": "shared", "customer": c.pk, "plan": plan.pk, "image": image.pk,
               "hostname": "web"} for c in customers]
    results = _post_concurrently(bodies, key)
    assert Instance.objects.count() == 1
    assert sorted(code for code, _ in results) == [202, 409, 409, 409]
    assert Customer.objects.count() == 4
