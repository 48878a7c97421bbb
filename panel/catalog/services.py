"""Changing the catalogue: plans (sizes, prices, which hosts may run them) and images (built,
enabled, retired). Every change is audited."""

from __future__ import annotations

from django.db import transaction

from panel.audit import services as audit
from panel.catalog.models import Image, Plan

BUILD_IMAGE_TASK = "berth.panel.build_image"


class CatalogError(Exception):
    """The change would break something that exists; ``field`` names the input at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def save_plan(plan: Plan, *, hosts, actor, source: str = "ui") -> Plan:
    """Create or update ``plan`` (unsaved changes applied) and the hosts it may run on."""
    with transaction.atomic():
        created = plan.pk is None
        if not created:
            before = Plan.objects.select_for_update().get(pk=plan.pk)
            if before.kind != plan.kind and before.instances.exists():
                raise CatalogError(
                    "Instances use this plan, so its kind cannot change; create a new plan.", "kind"
                )
        plan.save()
        plan.hosts.set(hosts)
        names = sorted(h.name for h in hosts)
        audit.record(
            action="plan.create" if created else "plan.update", source=source, actor=actor, target=plan,
            message=f"{'Created' if created else 'Changed'} plan {plan.name}: {plan.vcpus} vCPU, "
            f"{plan.memory_mib} MiB, {plan.disk_gib} GiB, {plan.price_monthly}/month, "
            f"hosts: {', '.join(names) or 'all'}.",
            data={"hosts": names, "active": plan.is_active},
        )
    return plan


def set_image_active(image: Image, *, active: bool, actor, source: str = "ui") -> Image:
    """Enable an image for new orders, or retire it (existing instances keep running on it)."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        image.is_active = active
        image.save(update_fields=["is_active", "updated_at"])
        audit.record(
            action="image.enable" if active else "image.retire", source=source, actor=actor,
            target=image,
            message=f"{'Enabled' if active else 'Retired'} image {image}"
            + ("." if active else f"; {image.instances.exclude(state='terminated').count()} instances still use it."),
        )
    return image


def queue_image_build(*, name: str, kind: str, actor, source: str = "ui") -> None:
    """Build (or rebuild) an image on the panel worker; the audit log says when it is done."""
    from panel.catalog.images import BUILDERS  # noqa: PLC0415
    from panel.celery import app  # noqa: PLC0415

    if (name, kind) not in BUILDERS:
        raise CatalogError(f"No builder for {name} ({kind}).", "image")
    audit.record(action="image.build", source=source, actor=actor,
                 message=f"Build of {name} ({kind}) queued.", data={"name": name, "kind": kind})
    transaction.on_commit(lambda: app.send_task(
        BUILD_IMAGE_TASK, kwargs={"name": name, "kind": kind}, queue="panel"
    ))


def build_image_now(*, name: str, kind: str) -> Image:
    """What the build task runs: build, register, and record the outcome either way."""
    from panel.catalog.images import build_image  # noqa: PLC0415

    try:
        image = build_image(name, kind)
    except Exception as exc:
        audit.record(action="image.build.failed", source="system",
                     message=f"Building {name} ({kind}) failed: {exc}", data={"name": name, "kind": kind})
        raise
    audit.record(action="image.build.done", source="system", target=image,
                 message=f"Built {image}: {image.size_bytes / 2**20:.1f} MiB, sha256 {image.checksum[:16]}…")
    return image
