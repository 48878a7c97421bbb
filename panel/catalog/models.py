"""What can be ordered: plans (sizes and prices) and images, each for one kind of instance."""

from django.db import models


class InstanceKind(models.TextChoices):
    CONTAINER = "container", "Container"
    VM = "vm", "Virtual machine"


class Plan(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=InstanceKind.choices)
    vcpus = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_gib = models.PositiveIntegerField()
    pids_max = models.PositiveIntegerField(default=512, help_text="Containers: process limit.")
    price_hourly = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    price_monthly = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    max_snapshots = models.PositiveSmallIntegerField(
        default=3, help_text="Snapshots an instance on this plan may keep at once (0: none)."
    )
    is_active = models.BooleanField(default=True)
    hosts = models.ManyToManyField(
        "hosts.Host", blank=True, related_name="plans",
        help_text="Hosts that may run this plan; none chosen means every host.",
    )

    class Meta:
        ordering = ["kind", "memory_mib", "name"]

    def __str__(self) -> str:
        return self.name


class Image(models.Model):
    class Source(models.TextChoices):
        BUILT = "built", "Built by Berth"
        OCI = "oci", "Imported OCI image"
        ISO = "iso", "Installer ISO"

    name = models.CharField(max_length=100, help_text="Imported images: repository:tag.")
    kind = models.CharField(max_length=20, choices=InstanceKind.choices)
    path = models.CharField(max_length=500, help_text="Directory in the image store.")
    size_bytes = models.BigIntegerField(default=0)
    checksum = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.BUILT)
    digest = models.CharField(
        max_length=80, blank=True, help_text="Imported images: the config's sha256 (the image id)."
    )
    config = models.JSONField(
        default=dict, blank=True,
        help_text="Imported images: entrypoint, cmd, env, working dir, user, ports, volumes.",
    )
    is_active = models.BooleanField(default=True)
    owner = models.ForeignKey(
        "accounts.Customer", null=True, blank=True, on_delete=models.CASCADE,
        related_name="private_images",
        help_text="A customer's own installer ISO: only they may order it. Empty: everyone.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["name", "kind"], name="image_unique_name_per_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    def orderable_by(self, customer) -> bool:
        """Everyone's image, or this customer's own."""
        return self.owner_id is None or (customer is not None and self.owner_id == customer.pk)

    @property
    def is_app(self) -> bool:
        """An application image: its process runs under Berth's init and can be upgraded."""
        return self.source == self.Source.OCI
