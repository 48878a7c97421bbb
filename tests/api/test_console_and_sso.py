"""Console tickets (POST …/console/) and single sign-on links (POST …/sso)."""

from datetime import timedelta

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from panel.api.services.sso import _key
from panel.instances.models import Instance, InstanceState
from tests.api.conftest import client_for
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory
from tests.panel.test_consumers import communicator

S = InstanceState


# --- console ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_console_ticket_url_and_expiry(customer_api, running):
    response = customer_api.post(f"/api/v1/services/{running.pk}/console/")
    assert response.status_code == 201
    data = response.json()
    prefix = f"/ws/instances/{running.pk}/console/?ticket="
    assert data["url"].startswith(prefix) and len(data["url"]) > len(prefix) + 20
    left = parse_datetime(data["expires_at"]) - timezone.now()
    assert timedelta(seconds=50) < left <= timedelta(seconds=60)


@pytest.mark.django_db
def test_no_console_unless_running(api, service):
    response = api.post(f"/api/v1/services/{service.pk}/console/")
    assert response.status_code == 409 and response.json()["state"] == "pending"


@pytest.fixture
def live_instance(transactional_db):
    return Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="web", host=HostFactory(), state=S.RUNNING,
    )


def _ticket_path(instance, key):
    url = client_for(key).post(f"/api/v1/services/{instance.pk}/console/").json()["url"]
    return url


@pytest.mark.django_db(transaction=True)
async def test_the_api_ticket_opens_the_console_once(live_instance):
    from panel.api.services.tokens import create_token

    key = (await database_sync_to_async(create_token)(name="b", scope="billing"))[1]
    url = await database_sync_to_async(_ticket_path)(live_instance, key)
    ws = communicator(url)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from(timeout=3)) == {"type": "state", "state": "running"}
    await ws.disconnect()
    assert not (await communicator(url).connect())[0]


# --- single sign-on ------------------------------------------------------------------------

@pytest.mark.django_db
def test_sso_link_logs_the_customer_in_once(api, running, client):
    response = api.post(f"/api/v1/services/{running.pk}/sso")
    assert response.status_code == 201
    data = response.json()
    assert data["url"].startswith("http://testserver/sso/")
    assert parse_datetime(data["expires_at"]) - timezone.now() <= timedelta(minutes=5)

    path = data["url"].removeprefix("http://testserver")
    visit = client.get(path)
    assert visit.status_code == 302 and visit.url == f"/instances/{running.pk}/"
    page = client.get(visit.url)
    assert page.status_code == 200 and page.context["user"] == running.customer.user

    stranger = type(client)()
    second = stranger.get(path)
    assert second.status_code == 410
    assert "_auth_user_id" not in stranger.session


@pytest.mark.django_db
def test_an_expired_or_made_up_link_is_410(api, running, client):
    url = api.post(f"/api/v1/services/{running.pk}/sso").json()["url"]
    token = url.rstrip("/").rsplit("/", 1)[-1]
    store = redis.Redis.from_url(settings.REDIS_URL)
    assert 0 < store.ttl(_key(token)) <= 300
    store.delete(_key(token))  # what expiry does
    store.close()
    assert client.get(f"/sso/{token}/").status_code == 410
    assert client.get("/sso/made-up/").status_code == 410
    assert client.get("/").status_code == 302  # still not logged in


@pytest.mark.django_db
def test_a_customer_token_gets_links_for_its_own_services_only(customer_api, stranger_api, running):
    assert customer_api.post(f"/api/v1/services/{running.pk}/sso").status_code == 201
    assert stranger_api.post(f"/api/v1/services/{running.pk}/sso").status_code == 404
