"""Customers (the people and companies that order instances, each linked to a Django user),
their SSH keys, and the provider's switches for the customer side (sign-up, support contact)."""

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


class SshKey(models.Model):
    """An OpenSSH public key a customer can put into new instances (``authorized_keys``)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField(help_text="One line: type, base64 key and comment.")
    fingerprint = models.CharField(max_length=100, help_text="SHA256, as ssh-keygen -l shows it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["customer", "fingerprint"], name="ssh_key_once_per_customer"),
            models.UniqueConstraint(fields=["customer", "name"], name="ssh_key_name_per_customer"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"

    @property
    def key_type(self) -> str:
        return self.public_key.split(" ", 1)[0]


class SiteSettings(models.Model):
    """One row (pk 1): what the provider switches on and off for customers."""

    signup_open = models.BooleanField(
        null=True, blank=True,
        help_text="Whether anyone may create a customer account. Empty: follow the "
                  "BERTH_SIGNUP_OPEN environment setting.",
    )
    support_email = models.EmailField(
        blank=True, help_text="Where customers are told to write, e.g. about a suspension."
    )

    class Meta:
        verbose_name = "site settings"
        verbose_name_plural = "site settings"

    def __str__(self) -> str:
        return "Site settings"

    def save(self, *args, **kwargs):
        self.pk = 1  # one row, whoever creates it (the admin's add form included)
        super().save(*args, **kwargs)
