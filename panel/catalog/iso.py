"""Installer ISOs in the catalogue (``manage.py import_iso``, the staff page): a VM image whose
instances boot the ISO from a CD-ROM with an empty disk of the plan's size, and are installed
by the customer through the browser's screen (noVNC) or serial console.

Checking and keeping the file is ``workers/images/iso.py`` (no Django there); this module names
the image, refuses a name already used by other content, and audits the import. A refused ISO
leaves nothing behind, in the store or in the database.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from panel.audit import services as audit
from panel.catalog.models import Image, InstanceKind
from workers.images.iso import ISO_DIR, IsoError, StoredIso, remove_stored_iso, store_iso

MAX_NAME = 100


class IsoImportError(Exception):
    """The ISO was refused; the message says why, for the admin. ``field`` names the input."""

    def __init__(self, message: str, field: str = "iso"):
        super().__init__(message)
        self.field = field


def _check_name(name: str, checksum: str | None = None, owner=None) -> None:
    """Refuse ``name`` when another VM image holds it; before the checksum is known (None) an
    installer ISO of that name passes (it may be this very file, imported again by the same
    owner). A customer is told only that the name is taken, nothing of whose image it is."""
    other = Image.objects.filter(name=name, kind=InstanceKind.VM).first()
    if other is None:
        return
    if (other.source != Image.Source.ISO or other.owner_id != (owner.pk if owner else None)
            or (checksum is not None and other.checksum != checksum)):
        if owner is not None:
            raise IsoImportError(f"The name {name} is already taken: choose another name.", "name")
        what = "an installer ISO" if other.source == Image.Source.ISO else "a VM image"
        raise IsoImportError(f"The name {name} is already taken by {what} with other contents"
                             f"{' (a customer’s own)' if other.owner_id else ''}: choose another "
                             "name.", "name")


def _check_customer_limits(owner, source: Path) -> None:
    from panel.catalog.selectors import private_isos  # noqa: PLC0415

    if not settings.BERTH_CUSTOMER_ISO_UPLOADS:
        raise IsoImportError("Adding your own ISOs is not enabled on this site.")
    limit = settings.BERTH_CUSTOMER_ISO_MAX
    if private_isos(owner).count() >= limit:
        raise IsoImportError(f"You have {limit} ISOs already, the most allowed: ask your provider "
                             "to remove one you no longer need.")
    max_mib = settings.BERTH_CUSTOMER_ISO_MAX_MIB
    if source.is_file() and source.stat().st_size > max_mib * 2**20:
        raise IsoImportError(f"The ISO is {source.stat().st_size / 2**20:.0f} MiB; at most "
                             f"{max_mib} MiB is allowed.")


def import_iso(source: Path, *, name: str, sha256: str = "", actor=None, source_label: str = "cli",
               upload: bool = False, progress: Callable[[str], None] = lambda _m: None,
               image_dir: Path | None = None, owner=None) -> tuple[Image, StoredIso]:
    """Check ``source`` (an ISO 9660 image a BIOS can boot; its sha256 when given), keep it in
    the image store and add it to the catalogue as VM image ``name``. The same ISO under the
    same name again returns the row it has. ``upload``: ``source`` is a received upload in the
    store (hard-linked rather than copied). ``owner``: a customer's own ISO, which only they
    may order (when the site allows customers to add ISOs, within its limits).
    Raises IsoImportError."""
    name = (name or "").strip()
    if not name:
        raise IsoImportError("Give the image a name.", "name")
    if len(name) > MAX_NAME:
        raise IsoImportError(f"A name is at most {MAX_NAME} characters.", "name")
    if owner is not None:
        _check_customer_limits(owner, source)
    _check_name(name, owner=owner)  # early, before copying gigabytes; again once the sum is known
    image_dir = image_dir or settings.BERTH_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    try:
        stored = store_iso(source, image_dir, name=name, expected_sha256=sha256,
                           progress=progress, source_is_ours=upload)
    except IsoError as exc:
        field = "sha256" if "sha256" in str(exc) or "Checksum" in str(exc) else "iso"
        raise IsoImportError(str(exc), field) from None
    path = f"{ISO_DIR}/{stored.path.name}"
    config = {"volume_id": stored.info.volume_id, "boot_platforms": list(stored.info.boot_platforms),
              "install": "boots the ISO from a CD-ROM with an empty disk"}

    def forget_file() -> None:
        if not stored.reused and not Image.objects.filter(path=path).exists():
            remove_stored_iso(image_dir, stored.checksum)

    try:
        with transaction.atomic():
            _check_name(name, stored.checksum, owner)
            image, created = Image.objects.get_or_create(
                name=name, kind=InstanceKind.VM,
                defaults={"path": path, "size_bytes": stored.size_bytes,
                          "checksum": stored.checksum, "source": Image.Source.ISO,
                          "digest": stored.checksum, "config": config, "owner": owner},
            )
            if created:
                audit.record(
                    action="image.import", source=source_label, actor=actor, target=image,
                    message=f"Imported installer ISO {name}"
                            f"{f' (own ISO of customer {owner.pk})' if owner else ''}: "
                            f"{stored.size_bytes / 2**20:.1f} MiB, "
                            f"{stored.checksum[:19]}…, volume {stored.info.volume_id or '(unnamed)'}"
                            f"{' (given sha256 verified)' if sha256 else ''}.",
                    data={"checksum": stored.checksum, "iso": True, "verified": bool(sha256),
                          "reused": stored.reused},
                )
    except IsoImportError:
        forget_file()
        raise
    except IntegrityError:  # the same name, imported by someone else at the same moment
        forget_file()
        raise IsoImportError(f"An image named {name} was imported meanwhile: choose another "
                             "name.", "name") from None
    return image, stored
