"""Fixtures for the billing API: tokens, clients holding them, and an ordered service."""

import pytest
from rest_framework.test import APIClient

from panel.api.services.tokens import create_token
from panel.instances.models import Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def billing_key(db):
    return create_token(name="billing", scope="billing")[1]


@pytest.fixture
def api(billing_key):
    """A client with a billing token."""
    return client_for(billing_key)


@pytest.fixture
def customer_api(customer):
    """A client with a token of ``customer``."""
    return client_for(create_token(name="own", scope="customer", customer=customer)[1])


@pytest.fixture
def stranger_api(other_customer):
    """A client with a token of another customer."""
    return client_for(create_token(name="other", scope="customer", customer=other_customer)[1])


@pytest.fixture
def service(customer, plan, image, host, sent_tasks):
    """A pending service of ``customer``, ordered through the API's path."""
    return order_instance(customer=customer, plan=plan, image=image, hostname="web",
                          source=Operation.Source.API, external_id="svc-1")


def finish(operation, *, ok=True, power_state=None, error=""):
    """What the host reports for ``operation``: started, then finished."""
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=ok, power_state=power_state, error=error)
    operation.refresh_from_db()
    return operation


@pytest.fixture
def running(service):
    finish(service.operations.get(), power_state="running")
    service.refresh_from_db()
    return service


@pytest.fixture(autouse=True)
def _no_remembered_tokens():
    """Each test sees the database's tokens, not ones a previous test left in the cache."""
    from panel.api.services.tokens import forget_cached_tokens

    forget_cached_tokens()
    yield
    forget_cached_tokens()
