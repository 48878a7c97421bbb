import pytest

from panel.audit.models import AuditEntry
from panel.hosts.models import Host, IpAddress
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.errors import CapacityError, InvalidOrder, QuotaExceeded
from panel.instances.services.ordering import order_instance
from tests.factories import HostFactory, ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db


def nothing_created():
    return not Instance.objects.exists() and not Operation.objects.exists() and not IpAddress.objects.exists()


def test_order_reserves_everything_and_queues_after_commit(customer, plan, image, host, sent_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        instance = order_instance(customer=customer, plan=plan, image=image, hostname="Web-1")
    assert instance.state == InstanceState.PENDING
    assert instance.hostname == "web-1"
    assert instance.host == host
    assert instance.ipv4 == ["10.99.0.2"]  # .1 is the gateway
    assert instance.uid_slot == 0
    op = instance.operations.get()
    assert (op.action, op.state) == ("create", "queued")
    assert AuditEntry.objects.filter(action="instance.order", target_id=str(instance.pk)).exists()
    [task] = sent_tasks
    assert task["queue"] == f"host.{host.name}"
    assert task["kwargs"]["operation_id"] == op.pk
    spec = task["kwargs"]["spec"]
    assert spec["uuid"] == instance.uuid.hex
    assert spec["network"] == {"address": "10.99.0.2", "prefixlen": 24, "gateway": "10.99.0.1",
                               "mac": instance.mac, "bridge": host.bridge}
    assert spec["memory_mib"] == plan.memory_mib and spec["image"]["path"] == image.path


def test_task_is_sent_only_when_the_order_commits(customer, plan, image, host, sent_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        order_instance(customer=customer, plan=plan, image=image, hostname="web")
    assert sent_tasks == []
    for callback in callbacks:
        callback()
    assert [t["name"] for t in sent_tasks] == ["berth.host.run_operation"]


@pytest.mark.parametrize("hostname", ["", "-bad", "bad_name", "x" * 64])
def test_bad_hostname_creates_nothing(customer, plan, image, host, hostname):
    with pytest.raises(InvalidOrder) as exc:
        order_instance(customer=customer, plan=plan, image=image, hostname=hostname)
    assert "hostname" in exc.value.errors
    assert nothing_created()


def test_image_of_the_wrong_kind_is_refused(customer, plan, host):
    vm_image = ImageFactory(name="tiny", kind="vm")
    with pytest.raises(InvalidOrder) as exc:
        order_instance(customer=customer, plan=plan, image=vm_image, hostname="web")
    assert "for virtual machines" in exc.value.errors["image"]
    assert nothing_created()


def test_inactive_plan_is_refused(customer, image, host):
    plan = PlanFactory(is_active=False)
    with pytest.raises(InvalidOrder) as exc:
        order_instance(customer=customer, plan=plan, image=image, hostname="web")
    assert "plan" in exc.value.errors
    assert nothing_created()


def test_quota_on_instances(customer, plan, image, host):
    customer.max_instances = 1
    customer.save()
    order_instance(customer=customer, plan=plan, image=image, hostname="one")
    with pytest.raises(QuotaExceeded, match="allows 1 instances"):
        order_instance(customer=customer, plan=plan, image=image, hostname="two")
    assert Instance.objects.count() == 1


def test_quota_on_memory(customer, image, host):
    customer.max_memory_mib = 300
    customer.save()
    with pytest.raises(QuotaExceeded, match="MiB of memory"):
        order_instance(customer=customer, plan=PlanFactory(memory_mib=512), image=image, hostname="big")
    assert nothing_created()


def test_suspended_customer_cannot_order(customer, plan, image, host):
    customer.is_suspended = True
    customer.save()
    with pytest.raises(QuotaExceeded, match="suspended"):
        order_instance(customer=customer, plan=plan, image=image, hostname="web")


def test_no_host_with_room_says_why(customer, image, db):
    HostFactory(name="full", memory_mib=128)
    HostFactory(name="off", status=Host.Status.OFFLINE)
    HostFactory(name="disabled", is_enabled=False)
    with pytest.raises(CapacityError) as exc:
        order_instance(customer=customer, plan=PlanFactory(memory_mib=256), image=image, hostname="web")
    assert exc.value.reasons == {
        "full": "not enough memory (0 of 128 MiB in use)",
        "off": "offline",
        "disabled": "disabled",
    }
    assert nothing_created()


def test_host_without_vm_support_is_skipped(customer, db):
    HostFactory(name="ct-only", supports_vms=False)
    with pytest.raises(CapacityError) as exc:
        order_instance(customer=customer, plan=PlanFactory(kind="vm"), image=ImageFactory(kind="vm"), hostname="v")
    assert exc.value.reasons == {"ct-only": "does not run vms"}


def test_full_pool_refuses_and_addresses_are_never_shared(customer, plan, image, db):
    HostFactory(name="tiny-pool", pool="10.98.0.0/30")  # .1 gateway, .2 the only address
    customer.max_instances = 5
    customer.save()
    first = order_instance(customer=customer, plan=plan, image=image, hostname="a")
    assert first.ipv4 == ["10.98.0.2"]
    with pytest.raises(CapacityError) as exc:
        order_instance(customer=customer, plan=plan, image=image, hostname="b")
    assert exc.value.reasons == {"tiny-pool": "no free IPv4 address in its pool"}


def test_spread_places_on_the_emptiest_host(customer, plan, image, db):
    a = HostFactory(name="a", pool="10.97.0.0/24")
    b = HostFactory(name="b", pool="10.96.0.0/24")
    first = order_instance(customer=customer, plan=plan, image=image, hostname="one")
    second = order_instance(customer=customer, plan=plan, image=image, hostname="two")
    assert {first.host, second.host} == {a, b}


def test_uid_slots_are_unique_per_host(customer, plan, image, host):
    slots = [order_instance(customer=customer, plan=plan, image=image, hostname=f"c{i}").uid_slot for i in range(3)]
    assert slots == [0, 1, 2]
