"""manage.py seed: plans, images, this machine as the first host, an admin and a demo customer.

Safe to run again: existing rows are kept, and the logins created the first time are printed
again from var/logins.json (passwords are stored hashed in the database, so they are kept in
that file, mode 0600, for the local demo only).
"""

import json
import secrets
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from panel.accounts.models import Customer
from panel.catalog.images import build_image
from panel.catalog.models import InstanceKind, Plan
from panel.hosts.services import register_host

PLANS = [
    # name, kind, vcpus, memory MiB, disk GiB, price per hour, price per month
    ("ct-nano", InstanceKind.CONTAINER, 1, 128, 1, "0.0014", "1.00"),
    ("ct-small", InstanceKind.CONTAINER, 1, 512, 5, "0.0042", "3.00"),
    ("ct-medium", InstanceKind.CONTAINER, 2, 2048, 20, "0.0139", "10.00"),
    ("vm-small", InstanceKind.VM, 1, 256, 2, "0.0069", "5.00"),
    ("vm-medium", InstanceKind.VM, 2, 1024, 10, "0.0208", "15.00"),
]


class Command(BaseCommand):
    help = "Seed plans, images, the local host and the demo logins (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--host-network", default="10.77.0.0/24")
        parser.add_argument("--bridge", default="berth0")
        parser.add_argument("--images", default="busybox:container,tiny:vm",
                            help="comma-separated name:kind to build; empty for none")

    def handle(self, *args, host_network, bridge, images, **options):
        with transaction.atomic():
            for name, kind, vcpus, mem, disk, hourly, monthly in PLANS:
                Plan.objects.get_or_create(
                    name=name,
                    defaults=dict(kind=kind, vcpus=vcpus, memory_mib=mem, disk_gib=disk,
                                  price_hourly=Decimal(hourly), price_monthly=Decimal(monthly)),
                )
            host = register_host(name=settings.BERTH_HOST_NAME, network=host_network, bridge=bridge)
        self.stdout.write(f"Host {host.name}: bridge {host.bridge}, pool {host.ip_pool.network}")
        for item in filter(None, images.split(",")):
            name, _, kind = item.partition(":")
            try:
                image = build_image(name, kind, progress=lambda m: self.stdout.write(f"  {m}"))
            except Exception as exc:  # one missing image must not stop the panel from starting
                self.stderr.write(self.style.WARNING(f"Image {name} ({kind}) not built: {exc}"))
            else:
                self.stdout.write(f"Image {image.name} ({image.kind}) ready.")
        logins = self._logins()
        self.stdout.write(self.style.SUCCESS("Logins (also in var/logins.json):"))
        for role, login in logins.items():
            self.stdout.write(f"  {role:9} {login['username']} / {login['password']}")

    def _logins(self) -> dict:
        path = settings.VAR_DIR / "logins.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        User = get_user_model()
        logins = {}
        for role, username, staff in (("admin", "admin", True), ("customer", "demo", False)):
            login = saved.get(role) or {"username": username, "password": secrets.token_urlsafe(9)}
            user = User.objects.filter(username=login["username"]).first()
            if user is None:
                user = User.objects.create_user(
                    login["username"], email=f"{login['username']}@example.com", password=login["password"],
                    is_staff=staff, is_superuser=staff,
                )
            if not staff:
                Customer.objects.get_or_create(user=user, defaults={"name": "Demo Customer"})
            logins[role] = login
        path.write_text(json.dumps(logins, indent=2))
        path.chmod(0o600)
        return logins
