"""manage.py import_iso PATH --name NAME [--sha256 HEX]: add an installer ISO to the image store
and the catalogue as a VM image (its VMs boot the ISO with an empty disk)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from panel.catalog.iso import IsoImportError, import_iso


class Command(BaseCommand):
    help = ("Import a bootable installer ISO as a VM image: ordering it gives a VM with an empty "
            "disk that boots the ISO from a CD-ROM.")

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="the .iso file")
        parser.add_argument("--name", required=True, help="the image's name in the catalogue")
        parser.add_argument("--sha256", default="",
                            help="the checksum the ISO's publisher gives; the import fails on a mismatch")

    def handle(self, *args, path: Path, name: str, sha256: str, **options):
        try:
            image, stored = import_iso(path, name=name, sha256=sha256, source_label="cli",
                                       progress=lambda msg: self.stdout.write(f"  {msg}"))
        except IsoImportError as exc:
            raise CommandError(f"{path} was not imported: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(
            f"{image.name} (image #{image.pk}, VM installer): {image.size_bytes / 2**20:.1f} MiB, "
            f"{image.checksum}{' (verified)' if sha256 else ''}, volume "
            f"{stored.info.volume_id or '(unnamed)'}"
            f"{'; the same ISO was already in the image store' if stored.reused else ''}"))
