"""Issue 7's worked example against the live stack: examples/billing_client.py creates a
customer and a real container service through the API, follows it by signed webhooks through
running, suspended, running and terminated, and nothing is left on the host."""

import pytest

from examples.billing_client import ApiError, BillingClient, WebhookReceiver, run_demo
from panel.api.services.tokens import create_token
from panel.instances.models import Instance
from panel.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.stack.helpers import host_leftovers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_the_example_billing_client_drives_a_service_through_its_life(stack):
    rows = stack.seed()
    key = create_token(name="example", scope="billing")[1]
    receiver = WebhookReceiver("example-secret")
    WebhookEndpoint.objects.create(url=receiver.url, secret="example-secret")
    client = BillingClient(stack.url, key)
    try:
        result = run_demo(client, receiver, plan=rows["plan"].pk, image=rows["image"].pk, log=lambda _: None)
    except (TimeoutError, ApiError) as exc:
        pytest.fail(f"{exc}\n{stack.all_logs()}")
    finally:
        receiver.close()

    states = result["states"]
    assert states["create"][-2:] == ["provisioning", "running"], states
    assert states["suspend"][-1] == "suspended" and states["unsuspend"][-1] == "running"
    assert states["terminate"][-2:] == ["terminating", "terminated"], states
    assert receiver.rejected == 0

    service = result["service"]
    instance = Instance.objects.get(pk=service["id"])
    assert service["state"] == "terminated" and service["ipv4"] == []
    assert instance.state == "terminated" and instance.customer.external_id == result["customer"]["external_id"]
    assert stack.host_driver().status(instance.uuid.hex).state == "absent"
    assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}
    deliveries = WebhookDelivery.objects.filter(payload__service__id=instance.pk)
    assert deliveries.exists() and not deliveries.exclude(status="delivered").exists()
    assert set(deliveries.values_list("response_code", flat=True)) == {204}
