"""Tokens: 401 without a valid one, 403 outside the token's scope, hashes only at rest."""

import hashlib
import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from panel.api.models import ApiToken
from panel.api.services.tokens import create_token, revoke_token
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


def test_no_token_is_401_with_a_bearer_challenge():
    response = APIClient().get("/api/v1/plans/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == PROBLEM
    assert response.json()["type"] == "urn:berth:problem:unauthorized"


@pytest.mark.parametrize("header", [
    "Bearer berth_not-a-real-token",
    "Bearer",
    "Bearer a b",
    "Bearer caf\u00e9".encode().decode("latin1"),
])
def test_an_invalid_token_is_401_invalid_token(header):
    response = APIClient().get("/api/v1/plans/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]
    assert response["Content-Type"] == PROBLEM


def test_another_scheme_is_401():
    response = APIClient().get("/api/v1/plans/", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert response.status_code == 401


def test_a_revoked_token_is_401():
    token, key = create_token(name="old", scope="billing")
    assert client_for(key).get("/api/v1/plans/").status_code == 200
    revoke_token(token=token)
    assert client_for(key).get("/api/v1/plans/").status_code == 401


def test_only_a_hash_of_the_key_is_stored_and_use_is_recorded():
    token, key = create_token(name="whmcs", scope="billing")
    token.refresh_from_db()
    assert key not in {token.key_hash, token.prefix, token.name}
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(token.prefix) and token.last_used_at is None
    client_for(key).get("/api/v1/plans/")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_customer_tokens_user_must_be_active(customer, customer_api):
    customer.user.is_active = False
    customer.user.save()
    assert customer_api.get("/api/v1/plans/").status_code == 401


@pytest.mark.parametrize("method,path,body", [
    ("post", "/api/v1/customers/", {"external_id": "x", "email": "x@example.com"}),
    ("get", "/api/v1/customers/", None),
    ("post", "/api/v1/services/", {"external_id": "x"}),
    ("post", "/api/v1/services/{id}/suspend", {}),
    ("post", "/api/v1/services/{id}/unsuspend", None),
    ("post", "/api/v1/services/{id}/change-plan", {"plan": 1}),
])
def test_customer_tokens_cannot_use_billing_endpoints(customer_api, running, method, path, body):
    response = getattr(customer_api, method)(path.format(id=running.pk), body, format="json")
    assert response.status_code == 403
    assert response["Content-Type"] == PROBLEM
    assert response.json()["type"] == "urn:berth:problem:forbidden"
    running.refresh_from_db()
    assert running.state == "running"


def test_create_api_token_command_prints_a_working_token_once(customer):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", "--scope", "billing", "--name", "WHMCS", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert client_for(key).get("/api/v1/plans/").status_code == 200
    assert "shown only now" in err.getvalue()

    out = io.StringIO()
    call_command("create_api_token", "--scope", "customer", "--name", "own", "--customer",
                 str(customer.pk), stdout=out, stderr=io.StringIO())
    token = ApiToken.objects.get(name="own")
    assert token.customer == customer and token.scope == "customer"
    assert client_for(out.getvalue().strip()).get("/api/v1/customers/").status_code == 403


def test_create_api_token_command_checks_the_customer():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="needs --customer"):
        call_command("create_api_token", "--scope", "customer", "--name", "x", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No customer"):
        call_command("create_api_token", "--scope", "customer", "--name", "x", "--customer", "nobody",
                     stdout=io.StringIO())
    assert not ApiToken.objects.exists()


def test_the_admin_creates_a_token_and_shows_it_once(admin_client, customer):
    response = admin_client.post(
        "/admin/api/apitoken/add/", {"name": "blesta", "scope": "customer", "customer": customer.pk},
        follow=True,
    )
    assert response.status_code == 200
    token = ApiToken.objects.get(name="blesta")
    [message] = [str(m) for m in response.context["messages"] if "shown only now" in str(m)]
    key = message.rsplit(" ", 1)[-1]
    assert key.startswith(token.prefix)
    assert client_for(key).get("/api/v1/services/").status_code == 200
    # A billing token with a customer is refused by the form.
    response = admin_client.post(
        "/admin/api/apitoken/add/", {"name": "bad", "scope": "billing", "customer": customer.pk}
    )
    assert response.status_code == 200 and not ApiToken.objects.filter(name="bad").exists()
