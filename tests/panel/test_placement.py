"""Placement: the filters (draining, plan allowed on the host), the admin's weigher, refused
orders recorded for the admin, and the race: 50 parallel orders for room for 10."""

import threading
from collections import Counter

import pytest
from django.db import connection

from panel.audit.models import AuditEntry
from panel.hosts.models import Host, IpAddress, PlacementPolicy
from panel.hosts.services import set_weigher, write_placement_failure
from panel.instances.models import Instance
from panel.instances.services.errors import CapacityError
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory


@pytest.mark.django_db
def test_draining_host_gets_nothing_new(customer, plan, image):
    HostFactory(name="old", is_draining=True, pool="10.91.0.0/24")
    new = HostFactory(name="new", pool="10.92.0.0/24")
    assert order_instance(customer=customer, plan=plan, image=image, hostname="a").host == new
    Host.objects.filter(pk=new.pk).update(is_draining=True)
    with pytest.raises(CapacityError) as exc:
        order_instance(customer=customer, plan=plan, image=image, hostname="b")
    assert exc.value.reasons == {"old": "draining", "new": "draining"}


@pytest.mark.django_db
def test_plan_runs_only_on_its_hosts(customer, image):
    a = HostFactory(name="a", pool="10.91.0.0/24")
    b = HostFactory(name="b", pool="10.92.0.0/24")
    pinned = PlanFactory(name="pinned")
    pinned.hosts.set([b])
    customer.max_instances = 10
    customer.save()
    hosts = {order_instance(customer=customer, plan=pinned, image=image, hostname=f"p{i}").host for i in range(3)}
    assert hosts == {b}
    # A plan without hosts may go anywhere: spread sends it to the empty host.
    assert order_instance(customer=customer, plan=PlanFactory(), image=image, hostname="free").host == a
    Host.objects.filter(pk=b.pk).update(is_enabled=False)
    with pytest.raises(CapacityError) as exc:
        order_instance(customer=customer, plan=pinned, image=image, hostname="p9")
    assert exc.value.reasons == {"a": "plan pinned is not allowed on this host", "b": "disabled"}


@pytest.mark.django_db
def test_pack_fills_the_fullest_host_first_and_spread_the_emptiest(customer, plan, image):
    customer.max_instances = 10
    customer.save()
    HostFactory(name="a", pool="10.91.0.0/24")
    HostFactory(name="b", pool="10.92.0.0/24")
    set_weigher(weigher=Host.Weigher.PACK)
    packed = [order_instance(customer=customer, plan=plan, image=image, hostname=f"k{i}").host.name for i in range(3)]
    assert packed == ["a", "a", "a"]
    set_weigher(weigher=Host.Weigher.SPREAD)
    spread = [order_instance(customer=customer, plan=plan, image=image, hostname=f"s{i}").host.name for i in range(3)]
    assert spread == ["b", "b", "b"]  # b is emptier until it holds as many as a
    assert PlacementPolicy.current().weigher == "spread"
    assert AuditEntry.objects.filter(action="placement.policy").count() == 2


@pytest.mark.django_db
def test_unknown_weigher_is_refused():
    from panel.hosts.services import HostError

    with pytest.raises(HostError, match="Unknown weigher"):
        set_weigher(weigher="random")


@pytest.mark.django_db
def test_failure_written_by_the_panel_worker_says_why_per_host(customer, plan):
    write_placement_failure(plan_id=plan.pk, customer_id=customer.pk, hostname="web",
                            reasons={"a": "offline", "b": "not enough memory (0 of 128 MiB in use)"},
                            actor_id=None, source="api")
    entry = AuditEntry.objects.get(action="placement.failed")
    assert entry.data["reasons"]["a"] == "offline"
    assert "a: offline; b: not enough memory" in entry.message
    assert (entry.source, entry.target_type, entry.target_id) == ("api", "plan", str(plan.pk))


@pytest.mark.django_db
def test_refusal_inside_an_outer_transaction_goes_to_the_panel_worker(customer, plan, image, monkeypatch):
    """The API orders inside its own transaction, which rolls back with the refusal: the entry
    is handed to the panel worker instead of being lost."""
    from panel.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, kwargs=None, queue=None, **_: sent.append((name, kwargs, queue)))
    HostFactory(name="off", status=Host.Status.OFFLINE)
    with pytest.raises(CapacityError):
        order_instance(customer=customer, plan=plan, image=image, hostname="web")
    [(name, kwargs, queue)] = sent
    assert (name, queue) == ("berth.panel.placement_failed", "panel")
    assert kwargs["reasons"] == {"off": "offline"} and kwargs["hostname"] == "web"


@pytest.mark.django_db(transaction=True)
def test_refused_order_is_recorded_for_the_admin(customer, plan, image):
    HostFactory(name="off", status=Host.Status.OFFLINE)
    with pytest.raises(CapacityError):
        order_instance(customer=customer, plan=plan, image=image, hostname="web")
    entry = AuditEntry.objects.get(action="placement.failed")
    assert entry.data["reasons"] == {"off": "offline"}
    assert entry.data["hostname"] == "web"
    assert not Instance.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_fifty_parallel_orders_for_room_for_ten(sent_tasks):
    """Two hosts with room for 5 instances each (memory), 50 orders at once from 50 customers
    (so only the host locks serialise them): exactly 10 placed, 40 refused with reasons, no
    address or uid range handed out twice."""
    HostFactory(name="race-a", memory_mib=1280, cpus=64, pool="10.93.0.0/24")
    HostFactory(name="race-b", memory_mib=1280, cpus=64, pool="10.94.0.0/24")
    plan = PlanFactory(memory_mib=256)
    image = ImageFactory()
    customers = [CustomerFactory() for _ in range(50)]
    barrier = threading.Barrier(50)
    placed, refused, crashed = [], [], []

    def order(i: int) -> None:
        try:
            barrier.wait()
            placed.append(order_instance(customer=customers[i], plan=plan, image=image, hostname=f"race{i}").pk)
        except CapacityError as exc:
            refused.append(exc)
        except Exception as exc:  # anything else is a bug the assertion below shows
            crashed.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=order, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert crashed == []
    assert (len(placed), len(refused)) == (10, 40)
    for exc in refused:
        assert str(exc) == "No host has room for this instance right now."
        assert set(exc.reasons) == {"race-a", "race-b"}
        assert all(r == "not enough memory (1280 of 1280 MiB in use)" for r in exc.reasons.values())
    instances = Instance.objects.filter(pk__in=placed)
    assert Counter(i.host.name for i in instances) == {"race-a": 5, "race-b": 5}
    addresses = list(IpAddress.objects.values_list("pool_id", "address"))
    assert len(addresses) == 10 and len(set(addresses)) == 10
    slots = list(instances.values_list("host_id", "uid_slot"))
    assert len(set(slots)) == 10
    assert AuditEntry.objects.filter(action="placement.failed").count() == 40
    assert len(sent_tasks) == 10
