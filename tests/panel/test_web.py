import pytest
from django.urls import reverse

from panel.instances.models import Instance
from panel.instances.services.ordering import order_instance
from tests.factories import ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client, customer):
    client.force_login(customer.user)
    return client


@pytest.fixture
def instance(customer, plan, image, host, sent_tasks):
    return order_instance(customer=customer, plan=plan, image=image, hostname="web")


def test_pages_need_a_login(client):
    response = client.get(reverse("instance-list"))
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_order_form_creates_and_redirects(logged_in, plan, image, host, sent_tasks):
    response = logged_in.post(reverse("instance-order"), {"plan": plan.pk, "image": image.pk, "hostname": "Shop"})
    instance = Instance.objects.get()
    assert response.status_code == 302 and response.url == reverse("instance-detail", args=[instance.pk])
    assert instance.hostname == "shop"


@pytest.mark.parametrize("data,field,message", [
    ({"hostname": ""}, "hostname", "This field is required."),
    ({"hostname": "bad_name"}, "hostname", "Use only letters, digits and hyphens"),
    ({"hostname": "-x"}, "hostname", "do not start or end with a hyphen"),
    ({"plan": 999999}, "plan", "Choose one of the plans listed."),
])
def test_order_form_shows_errors_next_to_the_field(logged_in, plan, image, host, data, field, message):
    payload = {"plan": plan.pk, "image": image.pk, "hostname": "ok", **data}
    response = logged_in.post(reverse("instance-order"), payload)
    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(message in e for e in errors)
    assert not Instance.objects.exists()


def test_order_form_refuses_an_image_of_another_kind(logged_in, plan, host):
    vm_image = ImageFactory(name="tiny", kind="vm")
    response = logged_in.post(reverse("instance-order"), {"plan": plan.pk, "image": vm_image.pk, "hostname": "x"})
    assert "is a virtual machine image" in response.context["form"].errors["image"][0]
    assert not Instance.objects.exists()


def test_order_form_says_when_no_host_has_room(logged_in, image, host):
    huge = PlanFactory(memory_mib=8192)  # within quota, more than the host has
    response = logged_in.post(reverse("instance-order"), {"plan": huge.pk, "image": image.pk, "hostname": "x"})
    assert "No host has room" in response.context["form"].non_field_errors()[0]
    assert not Instance.objects.exists()


def test_order_form_says_when_over_quota(logged_in, customer, plan, image, host):
    customer.max_instances = 0
    customer.save()
    response = logged_in.post(reverse("instance-order"), {"plan": plan.pk, "image": image.pk, "hostname": "x"})
    assert "quota allows 0 instances" in response.context["form"].non_field_errors()[0]


def test_instance_page_shows_state_and_address(logged_in, instance):
    response = logged_in.get(reverse("instance-detail", args=[instance.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert f'data-instance-state="{instance.pk}" data-state-version="0">pending<' in body
    assert "10.99.0.2" in body


def test_other_customers_instance_is_a_404_everywhere(client, other_customer, instance):
    client.force_login(other_customer.user)
    assert client.get(reverse("instance-detail", args=[instance.pk])).status_code == 404
    response = client.post(reverse("instance-action", args=[instance.pk, "terminate"]))
    assert response.status_code == 404
    assert instance.operations.count() == 1


def test_action_in_the_wrong_state_answers_409_with_a_reason(logged_in, instance):
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "start"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    assert "Cannot start an instance that is pending" in response.json()["detail"]


def test_terminate_from_the_page(logged_in, instance):
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "terminate"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 409  # the create operation is still queued
    instance.operations.update(state="succeeded")
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "terminate"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    instance.refresh_from_db()
    assert instance.state == "terminating"


def test_unknown_action_is_refused(logged_in, instance):
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "suspend"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 404
