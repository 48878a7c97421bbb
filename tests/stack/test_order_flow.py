"""Issue 2, steps 2-4 against the real stack: order → live states → console → stop/start →
terminate, with a real container on a throwaway host, and nothing left behind."""

import pytest

from panel.instances.models import Instance
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.helpers import ConsoleClient, EventStream, host_leftovers, session_headers

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_order_console_stop_start_terminate(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    events = EventStream(stack.ws_url, headers)
    try:
        instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="web-1")
        states = events.wait_state(instance.pk, "running", timeout=30)
        assert states == ["pending", "provisioning", "running"], stack.all_logs()
        instance.refresh_from_db()
        [address] = instance.ipv4

        console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", headers)
        assert console.run("hostname").strip() == "web-1"
        assert console.run("echo $$").strip() == "1"
        assert f"inet {address}/24" in console.run("ip addr show eth0")
        console.run("echo kept > /root/note")
        console.close()

        request_action(instance=instance, action="stop")
        events.wait_state(instance.pk, "stopped", timeout=30)
        driver = stack.host_driver()
        assert driver.status(instance.uuid.hex).state == "stopped"

        request_action(instance=instance, action="start")
        events.wait_state(instance.pk, "running", timeout=30)
        console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/", headers)
        assert console.run("cat /root/note").strip() == "kept"
        console.close()

        request_action(instance=instance, action="terminate")
        events.wait_state(instance.pk, "terminated", timeout=30)
        assert driver.status(instance.uuid.hex).state == "absent"
        assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}
        instance.refresh_from_db()
        assert instance.ipv4 == []
    finally:
        events.close()


def test_a_stranger_cannot_open_the_console(stack):
    rows = stack.seed()
    owner, stranger = CustomerFactory(), CustomerFactory()
    instance = Instance.objects.create(
        customer=owner, kind="container", plan=rows["plan"], image=rows["image"], hostname="x",
        host=rows["host"], state="running",
    )
    with pytest.raises(Exception, match="403"):
        ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/",
                      session_headers(stranger.user, stack.url))
