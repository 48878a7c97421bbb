"""Outages of what the panel stands on, caused for real against a stack of its own: its Redis
restarted, its database cut off, a host gone silent.

The stack here has a Redis of its own (so restarting it touches nobody else's tests) with the
persistence production needs (``appendonly yes``), reaches PostgreSQL through a TCP proxy the
test can cut, and runs beat, so heartbeats expire and operations are reaped as in production.
Requests go through the billing API and the WebSockets, as outside clients make them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from panel.api.services.tokens import create_token
from panel.audit.models import AuditEntry
from panel.hosts.models import Host
from panel.instances.models import Instance, Operation
from panel.staff.selectors import unreachable_instances
from tests.factories import CustomerFactory
from tests.stack.conftest import destroy_instances, running_stack
from tests.stack.fault_tools import CuttableProxy, PrivateRedis, api_client, wait_until
from tests.stack.helpers import ConsoleClient, EventStream, session_headers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def outage_stack(django_db_setup, django_db_blocker):
    directory = Path(tempfile.mkdtemp(prefix="berth-redis-", dir="/var/tmp"))
    redis_server = PrivateRedis(directory)
    redis_server.start()
    proxy = CuttableProxy()
    try:
        with running_stack(redis_url=redis_server.url, beat=True,
                           database_url=proxy.url(connection.settings_dict["NAME"])) as stack:
            stack.redis_server, stack.proxy = redis_server, proxy
            yield stack
    finally:
        proxy.close()
        redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def billing(outage_stack):
    """Seeded rows, a customer and a billing API client for the outage stack."""
    rows = outage_stack.seed()
    outage_stack.restart("beat")
    client = api_client(outage_stack, create_token(name="billing", scope="billing")[1])
    yield rows, CustomerFactory(), client
    client.close()
    outage_stack.proxy.restore()
    for name in ("host-worker", "agent"):
        if outage_stack.procs[name].poll() is not None:
            outage_stack.restart(name)
    destroy_instances(outage_stack)  # the next test starts on an empty host
    # Beat's transactions (heartbeat expiry, reaping) would deadlock with the database flush
    # that follows every test; it starts again with the next one.
    outage_stack.stop("beat")


def _order(client: httpx.Client, rows, customer, hostname: str) -> dict:
    response = client.post("services/", json={
        "external_id": f"svc-{secrets.token_hex(4)}", "customer": customer.pk,
        "plan": rows["plan"].pk, "image": rows["image"].pk, "hostname": hostname,
    })
    assert response.status_code == 202, response.text
    return response.json()


def _state(service_id: int) -> str:
    return Instance.objects.get(pk=service_id).state


def _history(service_id: int) -> str:
    """What happened to a service, for failure messages: its audit entries."""
    entries = AuditEntry.objects.filter(target_type="instance", target_id=str(service_id)).order_by("id")
    return "\n".join(f"  {e.at:%H:%M:%S.%f} {e.action}: {e.message}" for e in entries)


def _wait_state(stack, service_id: int, state: str, timeout: float = 60) -> None:
    wait_until(lambda: _state(service_id) == state, timeout,
               f"service {service_id} never became {state} (is {_state(service_id)})",
               lambda: f"{_history(service_id)}\n{stack.all_logs()}")


# --- Redis --------------------------------------------------------------------------------

def test_redis_restart_loses_no_queued_order_and_everything_reconnects(outage_stack, billing):
    stack, (rows, customer, api) = outage_stack, billing
    first = _order(api, rows, customer, "before")
    _wait_state(stack, first["id"], "running")

    # An order waits in the host's queue while its worker is away; Redis restarts meanwhile.
    stack.stop("host-worker")
    queued = _order(api, rows, customer, "queued")
    queue = f"host.{stack.host_name}"
    with stack.redis_server.client() as redis:
        assert redis.llen(queue) == 1
    restarted_at = time.time()
    stack.redis_server.stop(signal.SIGTERM)
    stack.redis_server.start()
    with stack.redis_server.client() as redis:
        assert redis.llen(queue) == 1  # the order survived the restart (appendonly)

    # The web tier reconnects by itself: the first requests after the restart just work.
    assert api.get("services/").status_code == 200
    assert api.get(f"services/{first['id']}/").json()["state"] == "running", _history(first["id"])

    # The worker comes back and runs the order that waited; the panel worker records it.
    stack.restart("host-worker")
    _wait_state(stack, queued["id"], "running")

    # The agent reconnected: heartbeats arrive again, and its console relay works.
    wait_until(lambda: Host.objects.get(name=stack.host_name).last_heartbeat.timestamp() > restarted_at + 1,
               30, "no heartbeat after the Redis restart", stack.all_logs)
    headers = session_headers(customer.user, stack.url)
    console = ConsoleClient(f"{stack.ws_url}ws/instances/{queued['id']}/console/", headers)
    try:
        assert _type_until_answered(console, "echo relayed-$((40+2))") == "relayed-42"
    finally:
        console.close()

    # A browser that reconnects gets live events again (live.js reconnects with backoff).
    events = EventStream(stack.ws_url, headers)
    try:
        assert api.post(f"services/{first['id']}/stop").status_code == 202
        events.wait_state(first["id"], "stopped", timeout=30)
    finally:
        events.close()


# --- the database ---------------------------------------------------------------------------

def test_database_outage_is_a_clear_503_loses_no_report_and_writes_nothing_half(outage_stack, billing):
    stack, (rows, customer, api) = outage_stack, billing
    first = _order(api, rows, customer, "before")
    _wait_state(stack, first["id"], "running")
    stack.stop("host-worker")
    queued = _order(api, rows, customer, "queued")
    web = httpx.Client(base_url=stack.url, timeout=30, follow_redirects=False)
    web.cookies.set("sessionid", _session_cookie(customer.user))
    instances_before = Instance.objects.count()

    stack.proxy.cut()
    try:
        page = web.get("/")
        assert page.status_code == 503
        assert page.headers["Retry-After"] == "30"
        assert "Temporarily unavailable" in page.text and "Traceback" not in page.text

        problem = api.get("services/")
        assert problem.status_code == 503
        assert problem.headers["Content-Type"] == "application/problem+json"
        assert problem.headers["Retry-After"] == "30"
        assert problem.json()["type"] == "urn:berth:problem:database-unavailable"

        refused = api.post("services/", json={
            "external_id": "during-outage", "customer": customer.pk, "plan": rows["plan"].pk,
            "image": rows["image"].pk, "hostname": "during",
        })
        assert refused.status_code == 503, refused.text

        # The host finishes the queued create meanwhile; its report must wait, not be lost.
        stack.restart("host-worker")
        wait_until(lambda: any(s.state == "running" for s in stack.host_driver().list_instances()
                               if s.uuid == Instance.objects.get(pk=queued["id"]).uuid.hex),
                   60, "the host did not run the queued create", stack.all_logs)
        time.sleep(3)  # the report has been tried and refused at least once
        assert _state(queued["id"]) in ("pending", "provisioning")
    finally:
        stack.proxy.restore()

    # The panel worker's retries land the report once the database is back.
    _wait_state(stack, queued["id"], "running", timeout=120)
    assert Operation.objects.get(instance_id=queued["id"], action="create").state == "succeeded"
    # Nothing from the refused request: no instance, no reservation, nothing sent to the host.
    assert Instance.objects.count() == instances_before
    assert not Instance.objects.filter(external_id="during-outage").exists()
    # And requests work again.
    assert web.get("/").status_code == 200
    again = _order(api, rows, customer, "after")
    _wait_state(stack, again["id"], "running")
    web.close()


def _type_until_answered(console: ConsoleClient, command: str, tries: int = 3) -> str:
    """Keys typed in the instant a relay reattaches after the restart are dropped, as they
    are in a browser; the person types again."""
    for attempt in range(tries):
        try:
            return console.run(command, timeout=5).strip()
        except TimeoutError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _session_cookie(user) -> str:
    from django.test import Client  # noqa: PLC0415

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# --- a host that goes silent ----------------------------------------------------------------

def test_a_silent_host_goes_offline_its_instances_unknown_and_comes_back(outage_stack, billing):
    stack, (rows, customer, api) = outage_stack, billing
    service = _order(api, rows, customer, "steady")
    _wait_state(stack, service["id"], "running")
    instance = Instance.objects.get(pk=service["id"])
    operations_before = list(Operation.objects.values_list("pk", flat=True))

    # The host's processes freeze (a network partition: the instance itself keeps running).
    frozen = ("agent", "host-worker")
    silent_at = time.monotonic()
    for name in frozen:
        os.killpg(stack.procs[name].pid, signal.SIGSTOP)
    try:
        wait_until(lambda: Host.objects.get(name=stack.host_name).status == Host.Status.OFFLINE, 60,
                   "the silent host never went offline", stack.all_logs)
        print(f"host offline {time.monotonic() - silent_at:.1f} s after it went silent")
        assert list(unreachable_instances().values_list("pk", flat=True)) == [instance.pk]
        refused = api.post("services/", json={
            "external_id": "while-silent", "customer": customer.pk, "plan": rows["plan"].pk,
            "image": rows["image"].pk, "hostname": "nowhere",
        })
        assert refused.status_code == 422  # no other host: not placed on the silent one
        time.sleep(10)  # beat keeps running meanwhile: heartbeat expiry, reaper, reconcile
    finally:
        for name in frozen:
            os.killpg(stack.procs[name].pid, signal.SIGCONT)

    wait_until(lambda: Host.objects.get(name=stack.host_name).status == Host.Status.ONLINE, 30,
               "the host did not come back online", stack.all_logs)
    assert not unreachable_instances().exists()
    # Nothing was re-placed, rescheduled or run twice while it was away.
    assert list(Operation.objects.values_list("pk", flat=True)) == operations_before
    assert Instance.objects.filter(customer=customer).count() == 1
    assert _state(service["id"]) == "running"
    assert [s.state for s in stack.host_driver().list_instances()] == ["running"]
