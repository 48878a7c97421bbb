"""Every error is problem+json with the right status; bad input is never a 500."""

import json

import pytest

from panel.api.throttling import shared_cache
from panel.instances.models import Instance

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


def assert_problem(response, status, slug=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    if slug:
        assert body["type"] == f"urn:berth:problem:{slug}"
    return body


def order(api, customer, plan, image, /, **overrides):
    body = {"external_id": "s-1", "customer": customer.pk, "plan": plan.pk, "image": image.pk,
            "hostname": "web", **overrides}
    return api.post("/api/v1/services/", body, format="json")


def test_validation_errors_are_listed_per_field(api, customer, plan, image, host, sent_tasks):
    body = assert_problem(order(api, customer, plan, image, hostname="bad_name", plan=999999), 400,
                          "validation-error")
    assert set(body["errors"]) == {"hostname", "plan"}
    assert all(isinstance(m, str) for messages in body["errors"].values() for m in messages)
    assert not Instance.objects.exists()


@pytest.mark.parametrize("field,value", [
    ("plan", "1"),                # a string where the contract has an integer
    ("plan", 1.0),
    ("plan", True),
    ("plan", None),
    ("plan", 2**70),              # beyond any database integer
    ("plan", -1),
    ("image", [1]),
    ("hostname", 12),             # an integer where the contract has a string
    ("hostname", None),
    ("hostname", ""),
    ("hostname", " web"),         # not stripped quietly: refused
    ("hostname", "web\n"),
    ("hostname", "a" * 64),
    ("hostname", "1234"),
    ("hostname", "nul\x00byte"),
    ("external_id", ""),
    ("external_id", "x" * 101),
    ("external_id", {"a": 1}),
    ("customer", False),
    ("customer", 0),
    ("customer", 2**70),
    ("customer", "no-such-customer"),
    ("customer", ""),
    ("customer", "ext\x00id"),      # PostgreSQL text cannot hold NUL: refused before the lookup
    ("external_id", "ext\x00id"),
])
def test_wrong_types_and_values_are_400(api, customer, plan, image, host, sent_tasks, field, value):
    body = assert_problem(order(api, customer, plan, image, **{field: value}), 400, "validation-error")
    assert field in body["errors"]
    assert not Instance.objects.exists()


@pytest.mark.parametrize("raw", ["{bad json", "[1, 2]", "null", '"text"', "", "{}", "12"])
def test_malformed_or_empty_bodies_are_400(api, raw, host):
    response = api.post("/api/v1/services/", raw, content_type="application/json")
    assert_problem(response, 400)


def test_a_lone_surrogate_is_400_not_a_database_error(api, customer, plan, image, host, sent_tasks):
    raw = json.dumps({"external_id": "x", "customer": customer.pk, "plan": plan.pk,
                      "image": image.pk, "hostname": "web"}).replace('"x"', '"\\ud800"')
    response = api.post("/api/v1/services/", raw, content_type="application/json")
    assert assert_problem(response, 400)["errors"]["external_id"]


def test_unknown_fields_are_ignored(api, customer, plan, image, host, sent_tasks):
    response = order(api, customer, plan, image, colour="blue")
    assert response.status_code == 202


def test_another_media_type_is_415(api, host):
    response = api.post("/api/v1/services/", "external_id=x", content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415, "unsupported-media-type")


def test_an_unsupported_method_is_405_with_allow(api):
    response = api.delete("/api/v1/services/")
    assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response["Allow"] and "GET" in response["Allow"]


@pytest.mark.parametrize("path", [
    "/api/v1/services/abc/",
    "/api/v1/services/-1/",
    "/api/v1/services/99999999999999999999999999/",
    "/api/v1/services/0/",
    "/api/v1/services/1.5/start",
    "/api/v1/no-such-thing/",
    "/api/v1/operations/9223372036854775807/",
])
def test_unknown_urls_and_ids_are_problem_404s(api, path):
    assert_problem(api.get(path), 404, "not-found")


def test_both_slash_spellings_answer(api, running):
    assert api.get(f"/api/v1/services/{running.pk}").status_code == 200
    assert api.post(f"/api/v1/services/{running.pk}/stop/").status_code == 202


@pytest.mark.parametrize("query", [
    "limit=abc", "limit=0", "limit=501", "limit=-1", "offset=-5", "offset=x",
    "offset=99999999999999999999999", "state=bogus", "external_id=", "customer=",
])
def test_bad_list_parameters_are_400(api, query):
    assert_problem(api.get(f"/api/v1/services/?{query}"), 400, "validation-error")


@pytest.mark.parametrize("query", ["from=yesterday", "to=2024-13-01", "from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z"])
def test_bad_usage_periods_are_400(api, running, query):
    assert_problem(api.get(f"/api/v1/services/{running.pk}/usage/?{query}"), 400, "validation-error")


def test_rate_limit_is_429_with_retry_after(api, settings, billing_key):
    settings.BERTH_API_RATE = "3/min"
    for _ in range(3):
        assert api.get("/api/v1/plans/").status_code == 200
    response = api.get("/api/v1/plans/")
    body = assert_problem(response, 429, "rate-limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "try again" in body["detail"]


def test_rate_limits_are_per_token(api, customer_api, settings):
    settings.BERTH_API_RATE = "2/min"
    for _ in range(2):
        api.get("/api/v1/plans/")
    assert api.get("/api/v1/plans/").status_code == 429
    assert customer_api.get("/api/v1/plans/").status_code == 200



def test_rate_limit_counters_expire_with_their_window(api, settings):
    settings.BERTH_API_RATE = "5/min"
    assert api.get("/api/v1/plans/").status_code == 200
    client = shared_cache()._cache.get_client(write=True)
    keys = client.keys(shared_cache().make_and_validate_key("api-rate:*:60:*"))
    assert keys, "no counter was written"
    for key in keys:
        assert 0 < client.ttl(key) <= 61  # never a counter that outlives its window
