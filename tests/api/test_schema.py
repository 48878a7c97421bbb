"""The OpenAPI document and the docs page: public, complete, and served without the internet."""

import re

import pytest
import yaml

pytestmark = pytest.mark.django_db

CONTRACT = {
    ("get", "/api/v1/plans/"), ("get", "/api/v1/images/"), ("post", "/api/v1/customers/"),
    ("post", "/api/v1/services/"), ("get", "/api/v1/services/"), ("get", "/api/v1/services/{id}/"),
    *(("post", f"/api/v1/services/{{id}}/{a}") for a in
      ("start", "stop", "reboot", "suspend", "unsuspend", "change-plan", "terminate", "sso")),
    ("get", "/api/v1/services/{id}/usage/"), ("post", "/api/v1/services/{id}/console/"),
    ("get", "/api/v1/operations/{id}/"),
}


@pytest.fixture
def document(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_every_contract_endpoint_is_documented_with_its_errors(document):
    operations = {(m, p): op for p, methods in document["paths"].items() for m, op in methods.items()}
    assert set(operations) >= CONTRACT
    for key in CONTRACT:
        responses = operations[key]["responses"]
        assert {"401", "429"} <= set(responses), key
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (key, code)
        assert operations[key]["security"] == [{"bearerAuth": []}]
    assert "404" in operations[("get", "/api/v1/services/{id}/")]["responses"]
    assert {"400", "403", "409", "422"} <= set(operations[("post", "/api/v1/services/")]["responses"])
    assert "403" in operations[("post", "/api/v1/services/{id}/suspend")]["responses"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])


def test_service_fields_match_the_contract(document):
    service = document["components"]["schemas"]["Service"]["properties"]
    assert {"id", "external_id", "customer", "kind", "plan", "image", "hostname", "state", "host",
            "ipv4", "created_at", "updated_at"} <= set(service)
    states = document["components"]["schemas"]["ServiceStateEnum"]["enum"]
    assert states == ["pending", "provisioning", "running", "stopped", "rebooting", "suspended",
                      "terminating", "terminated", "error"]


def test_the_docs_page_loads_its_assets_from_this_server(client):
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static/") for a in assets)
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
