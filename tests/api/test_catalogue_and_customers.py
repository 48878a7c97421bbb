"""GET plans/ and images/, POST customers/ (idempotent by external_id) and its reads."""

import pytest
from django.contrib.auth import get_user_model

from panel.accounts.models import Customer
from tests.factories import ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db


def test_plans_list_the_orderable_ones_with_the_contract_fields(api):
    plan = PlanFactory(name="s", kind="vm", vcpus=2, memory_mib=1024, disk_gib=10, price_hourly="0.0125")
    PlanFactory(name="old", is_active=False)
    response = api.get("/api/v1/plans/")
    assert response.status_code == 200
    assert response.json() == [{
        "id": plan.pk, "name": "s", "kind": "vm", "vcpus": 2, "memory_mib": 1024, "disk_gib": 10,
        "price_hourly": "0.0125", "price_monthly": "3.00",
    }]


def test_images_list_the_orderable_ones(customer_api):
    image = ImageFactory(name="debian-12", kind="container")
    ImageFactory(name="gone", is_active=False)
    response = customer_api.get("/api/v1/images/")
    assert response.status_code == 200
    assert response.json() == [{"id": image.pk, "name": "debian-12", "kind": "container"}]


def test_create_customer_then_the_same_external_id_returns_it(api):
    response = api.post("/api/v1/customers/", {"external_id": "whmcs-7", "email": "Ann@Example.com",
                                               "name": "Ann"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["external_id"] == "whmcs-7" and body["email"] == "Ann@example.com"  # domain normalised
    customer = Customer.objects.get(pk=body["id"])
    assert customer.name == "Ann" and not customer.user.has_usable_password()

    again = api.post("/api/v1/customers/", {"external_id": "whmcs-7", "email": "other@example.com"},
                     format="json")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"] and again.json()["email"] == "Ann@example.com"
    assert Customer.objects.count() == 1


def test_a_taken_username_does_not_stop_a_new_customer(api):
    get_user_model().objects.create_user(username="bob@example.com", email="bob@example.com")
    response = api.post("/api/v1/customers/", {"external_id": "b 1", "email": "bob@example.com"},
                        format="json")
    assert response.status_code == 201
    assert Customer.objects.get(external_id="b 1").user.username == "billing-b-1"


@pytest.mark.parametrize("body,field", [
    ({"email": "a@example.com"}, "external_id"),
    ({"external_id": "x"}, "email"),
    ({"external_id": "x", "email": "not-an-email"}, "email"),
    ({"external_id": 5, "email": "a@example.com"}, "external_id"),
])
def test_create_customer_validates(api, body, field):
    response = api.post("/api/v1/customers/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not Customer.objects.exists()


def test_customers_list_filters_and_detail(api, customer):
    other = Customer.objects.create(user=get_user_model().objects.create_user("z"), external_id="ext-9")
    listing = api.get("/api/v1/customers/?external_id=ext-9").json()
    assert listing["count"] == 1 and listing["results"][0]["id"] == other.pk
    assert api.get(f"/api/v1/customers/{customer.pk}/").json()["id"] == customer.pk
    assert api.get("/api/v1/customers/987654/").status_code == 404
