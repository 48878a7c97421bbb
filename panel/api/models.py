"""API tokens: who may call the billing API, with which scope. Only a hash of the key is kept."""

from django.db import models
from django.db.models import Q


class ApiToken(models.Model):
    class Scope(models.TextChoices):
        BILLING = "billing", "Billing system (every customer)"
        CUSTOMER = "customer", "One customer (own services only)"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    customer = models.ForeignKey(
        "accounts.Customer", on_delete=models.CASCADE, null=True, blank=True,
        related_name="api_tokens", help_text="Required for customer tokens, empty for billing tokens.",
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        max_length=16, editable=False, help_text="The start of the key, to recognise it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(scope="billing", customer__isnull=True)
                           | Q(scope="customer", customer__isnull=False)),
                name="api_token_customer_matches_scope",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_billing(self) -> bool:
        return self.scope == self.Scope.BILLING

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
