"""Hosts (the machines instances run on) and the IPv4 pool each one hands out."""

import ipaddress

from django.db import models
from django.utils import timezone


class Host(models.Model):
    class Status(models.TextChoices):
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        UNKNOWN = "unknown", "Never seen"

    class Weigher(models.TextChoices):
        SPREAD = "spread", "Spread"
        PACK = "pack", "Pack"

    name = models.SlugField(max_length=40, unique=True)
    is_enabled = models.BooleanField(default=True, help_text="Disabled hosts get no new instances.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UNKNOWN)
    last_heartbeat = models.DateTimeField(null=True, blank=True)

    # Capacity as reported by the host agent, and the admin's overcommit ratios.
    cpus = models.PositiveIntegerField(default=0)
    memory_mib = models.PositiveIntegerField(default=0)
    disk_gib = models.PositiveIntegerField(default=0)
    cpu_overcommit = models.DecimalField(max_digits=5, decimal_places=2, default=4)
    memory_overcommit = models.DecimalField(max_digits=5, decimal_places=2, default=1)
    supports_containers = models.BooleanField(default=False)
    supports_vms = models.BooleanField(default=False)
    virt_type = models.CharField(max_length=10, blank=True, help_text="kvm or qemu (TCG).")
    virt_reason = models.CharField(max_length=300, blank=True)
    facts = models.JSONField(default=dict, blank=True, help_text="Last heartbeat's raw report.")

    # Where the host keeps things; sent to the host with every task.
    bridge = models.CharField(max_length=15, default="berth0")
    state_dir = models.CharField(max_length=500)
    uid_base = models.PositiveBigIntegerField(default=1_000_000)
    uid_slots = models.PositiveIntegerField(default=1024)

    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return f"host.{self.name}"

    def supports(self, kind: str) -> bool:
        return self.supports_containers if kind == "container" else self.supports_vms

    def mark_seen(self) -> None:
        self.last_heartbeat = timezone.now()
        self.status = self.Status.ONLINE


class IpPool(models.Model):
    host = models.OneToOneField(Host, on_delete=models.CASCADE, related_name="ip_pool")
    network = models.CharField(max_length=43, help_text="CIDR, e.g. 10.77.0.0/24")
    gateway = models.GenericIPAddressField(protocol="IPv4")

    def __str__(self) -> str:
        return self.network

    @property
    def ip_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network)

    @property
    def prefixlen(self) -> int:
        return self.ip_network.prefixlen

    def usable_addresses(self):
        gateway = ipaddress.IPv4Address(self.gateway)
        return (a for a in self.ip_network.hosts() if a != gateway)


class IpAddress(models.Model):
    """An address handed out from a pool. A row exists only while the address is allocated."""

    pool = models.ForeignKey(IpPool, on_delete=models.CASCADE, related_name="addresses")
    address = models.GenericIPAddressField(protocol="IPv4")
    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="ip_addresses"
    )
    allocated_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pool", "id"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "address"], name="ip_unique_in_pool"),
        ]

    def __str__(self) -> str:
        return self.address
