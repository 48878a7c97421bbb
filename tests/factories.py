"""factory_boy factories for the panel's models."""

import ipaddress

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from panel.accounts.models import Customer
from panel.catalog.models import Image, InstanceKind, Plan
from panel.hosts.models import Host, IpPool


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery")


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Customer {n}")


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    name = factory.Sequence(lambda n: f"plan-{n}")
    kind = InstanceKind.CONTAINER
    vcpus = 1
    memory_mib = 256
    disk_gib = 1
    price_monthly = 3


class ImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Image

    name = factory.Sequence(lambda n: f"image-{n}")
    kind = InstanceKind.CONTAINER
    path = factory.LazyAttribute(lambda i: i.name)


class HostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Host
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"h{n}")
    status = Host.Status.ONLINE
    last_heartbeat = factory.LazyFunction(timezone.now)
    cpus = 4
    memory_mib = 4096
    disk_gib = 100
    cpu_overcommit = 1
    memory_overcommit = 1
    supports_containers = True
    supports_vms = True
    state_dir = factory.LazyAttribute(lambda h: f"/tmp/berth-test-hosts/{h.name}")

    @factory.post_generation
    def pool(host, create, extracted, **kwargs):
        """HostFactory(pool="10.98.0.0/24") chooses the pool; the gateway is its first address."""
        if not create:
            return
        net = ipaddress.IPv4Network(extracted or "10.99.0.0/24")
        IpPool.objects.create(host=host, network=str(net), gateway=str(next(net.hosts())))


class WebhookEndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "webhooks.WebhookEndpoint"

    url = "http://127.0.0.1:9/hook"
    secret = factory.Sequence(lambda n: f"secret-{n}")
