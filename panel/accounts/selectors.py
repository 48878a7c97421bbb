"""Reading accounts: the customer behind a user, their quota in use, SSH keys and API tokens."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Sum
from django.http import Http404

from panel.accounts.models import Customer, SshKey
from panel.api.models import ApiToken
from panel.instances.models import Instance


def customer_of(user) -> Customer | None:
    """The customer account of ``user``; None for staff without one."""
    if not user.is_authenticated:
        return None
    return Customer.objects.filter(user=user).first()


@dataclass(frozen=True)
class QuotaUsage:
    instances: int
    vcpus: int
    memory_mib: int
    max_instances: int
    max_vcpus: int
    max_memory_mib: int

    @property
    def instances_left(self) -> int:
        return max(0, self.max_instances - self.instances)

    @property
    def vcpus_left(self) -> int:
        return max(0, self.max_vcpus - self.vcpus)

    @property
    def memory_mib_left(self) -> int:
        return max(0, self.max_memory_mib - self.memory_mib)

    def fits(self, *, vcpus: int, memory_mib: int) -> bool:
        return self.instances_left >= 1 and vcpus <= self.vcpus_left and memory_mib <= self.memory_mib_left


def quota_usage(customer: Customer) -> QuotaUsage:
    """What the customer's live instances hold, counted as the order service counts it."""
    used = Instance.objects.live().filter(customer=customer).aggregate(
        count=Count("id"), vcpus=Sum("plan__vcpus"), memory=Sum("plan__memory_mib")
    )
    return QuotaUsage(
        instances=used["count"], vcpus=used["vcpus"] or 0, memory_mib=used["memory"] or 0,
        max_instances=customer.max_instances, max_vcpus=customer.max_vcpus,
        max_memory_mib=customer.max_memory_mib,
    )


def get_ssh_key(customer: Customer | None, pk: int) -> SshKey:
    """The customer's own key; Http404 for anyone else's."""
    key = SshKey.objects.filter(customer=customer, pk=pk).first() if customer else None
    if key is None:
        raise Http404("No such key.")
    return key


def customer_tokens(customer: Customer | None):
    """The customer's own API tokens, newest first (revoked ones too, marked so)."""
    return ApiToken.objects.filter(customer=customer, scope=ApiToken.Scope.CUSTOMER) if customer else ApiToken.objects.none()


def get_customer_token(customer: Customer | None, pk: int) -> ApiToken:
    token = customer_tokens(customer).filter(pk=pk).first()
    if token is None:
        raise Http404("No such token.")
    return token
