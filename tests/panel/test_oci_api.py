"""Application images through the billing API: ordering with a command and environment
(idempotent by external_id, checked field by field), and the upgrade and rollback actions."""

from __future__ import annotations

import json

import pytest
import yaml
from rest_framework.test import APIClient

from panel.api.services.tokens import create_token
from panel.instances.models import Instance
from tests.panel import test_oci_web
from tests.panel.test_oci import finish

pytestmark = pytest.mark.django_db

# The application-image fixtures, shared with the web tests.
store = test_oci_web.store
app_images = test_oci_web.app_images


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def api(db):
    return client_for(create_token(name="billing", scope="billing")[1])


def order(api, customer, plan, image, **extra):
    body = {"external_id": "svc-app", "customer": customer.pk, "plan": plan.pk, "image": image.pk,
            "hostname": "shop", **extra}
    # Encoded here (ASCII-escaped) so that a lone surrogate reaches the server as JSON would.
    return api.post("/api/v1/services/", json.dumps(body), content_type="application/json")


def test_order_with_command_and_env_then_the_same_again(api, customer, plan, host, app_images, sent_tasks):
    v1, _ = app_images
    extra = {"command": ["/app/run", "once"], "env": {"GREETING": "from billing"}}
    response = order(api, customer, plan, v1, **extra)
    assert response.status_code == 202, response.json()
    service = response.json()
    assert service["command"] == ["/app/run", "once"] and "env" not in service  # may be secrets
    assert service["previous_image"] is None
    instance = Instance.objects.get(pk=service["id"])
    assert instance.app_env == {"GREETING": "from billing"}
    again = order(api, customer, plan, v1, **extra)
    assert again.status_code in (200, 202) and again.json()["id"] == service["id"]
    other = order(api, customer, plan, v1, command=["/app/run", "once"], env={"GREETING": "else"})
    assert other.status_code == 409 and "command" in other.json()["errors"]
    assert Instance.objects.count() == 1


@pytest.mark.parametrize(("extra", "field", "message"), [
    ({"command": "sh -c x"}, "command", "a list of strings"),
    ({"command": []}, "command", "at least a program"),
    ({"command": ["a", 1]}, "command", "a list of strings"),
    ({"env": {"A B": "x"}}, "env", "is not a variable name"),
    ({"env": ["A=b"]}, "env", "an object of strings"),
    ({"env": {"A": "\ud800"}}, "env", "valid Unicode"),
])
def test_bad_command_or_env_is_a_400(api, customer, plan, host, app_images, extra, field, message):
    response = order(api, customer, plan, app_images[0], **extra)
    assert response.status_code == 400 and response["Content-Type"] == "application/problem+json"
    assert message in " ".join(response.json()["errors"][field])
    assert not Instance.objects.exists()


def test_a_system_image_takes_no_command(api, customer, plan, image, host):
    response = order(api, customer, plan, image, command=["sh"])
    assert response.status_code == 400
    assert "only application images" in response.json()["errors"]["command"][0]


@pytest.fixture
def service(api, customer, plan, host, app_images, sent_tasks):
    response = order(api, customer, plan, app_images[0])
    instance = Instance.objects.get(pk=response.json()["id"])
    finish(instance.operations.get())
    return instance


def test_upgrade_and_rollback(api, service, app_images):
    v1, v2 = app_images
    response = api.post(f"/api/v1/services/{service.pk}/upgrade", {"image": v2.pk}, format="json")
    assert response.status_code == 202, response.json()
    operation = api.get(f"/api/v1/operations/{response.json()['operation']}/").json()
    assert operation["action"] == "upgrade" and operation["state"] == "queued"
    finish(service.operations.get(pk=operation["id"]))
    body = api.get(f"/api/v1/services/{service.pk}/").json()
    assert (body["image"], body["previous_image"], body["state"]) == (v2.pk, v1.pk, "running")
    response = api.post(f"/api/v1/services/{service.pk}/rollback")
    assert response.status_code == 202
    finish(service.operations.get(pk=response.json()["operation"]))
    assert api.get(f"/api/v1/services/{service.pk}/").json()["image"] == v1.pk


def test_upgrade_errors(api, service, app_images, image, other_customer):
    base = f"/api/v1/services/{service.pk}"
    cases = [({"image": "x"}, 400, "A whole number"), ({}, 400, "required"),
             ({"image": image.pk}, 400, "not an application image"),
             ({"image": app_images[0].pk}, 400, "already runs")]
    for body, status, text in cases:
        response = api.post(f"{base}/upgrade", body, format="json")
        assert response.status_code == status and text in str(response.json()), (body, response.json())
    response = api.post(f"{base}/rollback")
    assert response.status_code == 409 and "no earlier image" in response.json()["detail"]
    stranger = client_for(create_token(name="c", scope="customer", customer=other_customer)[1])
    response = stranger.post(f"{base}/upgrade", {"image": app_images[1].pk}, format="json")
    assert response.status_code == 404
    api.post(f"{base}/upgrade", {"image": app_images[1].pk}, format="json")
    busy = api.post(f"{base}/rollback")
    assert busy.status_code == 409 and "busy" in busy.json()["detail"]


def test_a_customer_token_may_upgrade_its_own_service(service, customer, app_images):
    own = client_for(create_token(name="own", scope="customer", customer=customer)[1])
    response = own.post(f"/api/v1/services/{service.pk}/upgrade", {"image": app_images[1].pk},
                        format="json")
    assert response.status_code == 202


def test_the_schema_documents_upgrade_and_rollback(client):
    document = yaml.safe_load(client.get("/api/v1/schema/").content)
    upgrade = document["paths"]["/api/v1/services/{id}/upgrade"]["post"]
    assert {"400", "401", "404", "409", "429"} <= set(upgrade["responses"])
    assert "/api/v1/services/{id}/rollback" in document["paths"]
    create = document["components"]["schemas"]["ServiceCreateRequest"]["properties"]
    assert create["command"]["maxItems"] == 64 and create["env"]["type"] == "object"
