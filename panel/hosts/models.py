"""Hosts (the machines instances run on), the IPv4 pool each one hands out, their capacity
samples and the fleet's placement policy."""

from __future__ import annotations

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
    is_draining = models.BooleanField(
        default=False, help_text="Draining hosts get no new instances; the admin moves the rest away."
    )
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

    # The host's Redis credential (panel/hosts/credentials.py): only the secret's SHA-256 is
    # kept, which is all Redis's ACL needs; the secret itself is shown once, when issued.
    credential_hash = models.CharField(max_length=64, blank=True)
    credential_issued_at = models.DateTimeField(null=True, blank=True)

    notes = models.TextField(blank=True, help_text="Maintenance notes for the admins.")
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

    @property
    def is_online(self) -> bool:
        return self.status == self.Status.ONLINE

    @property
    def accepts_instances(self) -> bool:
        return self.is_enabled and not self.is_draining

    def mark_seen(self) -> None:
        self.last_heartbeat = timezone.now()
        self.status = self.Status.ONLINE


class HostSample(models.Model):
    """One point of a host's capacity graph, taken from a heartbeat (at most one per interval)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True)
    load1 = models.FloatField(default=0)
    memory_used_mib = models.PositiveIntegerField(default=0)
    disk_used_gib = models.PositiveIntegerField(default=0)
    instances_running = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["host", "at"]
        indexes = [models.Index(fields=["host", "at"])]

    def __str__(self) -> str:
        return f"{self.host} @ {self.at:%H:%M:%S}"


class PlacementPolicy(models.Model):
    """Fleet-wide placement settings the admin chooses (one row)."""

    weigher = models.CharField(
        max_length=10, choices=Host.Weigher.choices, default=Host.Weigher.SPREAD,
        help_text="Spread: the emptiest host first. Pack: the fullest host that still fits first.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "placement policy"

    def __str__(self) -> str:
        return f"placement: {self.weigher}"

    @classmethod
    def current(cls) -> PlacementPolicy:
        policy, _ = cls.objects.get_or_create(pk=1)
        return policy


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
