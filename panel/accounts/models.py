"""Customers: the people and companies that order instances. Each is linked to a Django user."""

from django.conf import settings
from django.db import models


class Customer(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="customer"
    )
    name = models.CharField(max_length=200, blank=True)
    external_id = models.CharField(
        max_length=100, unique=True, null=True, blank=True,
        help_text="The billing system's id for this customer.",
    )
    max_instances = models.PositiveIntegerField(default=10)
    max_vcpus = models.PositiveIntegerField(default=16)
    max_memory_mib = models.PositiveIntegerField(default=32768)
    is_suspended = models.BooleanField(default=False)
    suspended_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or self.user.get_username()

    @property
    def email(self) -> str:
        return self.user.email
