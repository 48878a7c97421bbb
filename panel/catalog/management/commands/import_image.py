"""manage.py import_image PATH [--name NAME[:TAG]]: import an OCI image (a layout directory,
an oci-archive or a docker save tarball) into the image store and the catalogue."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from panel.catalog.oci import ImageImportError, import_image


class Command(BaseCommand):
    help = ("Import an OCI image (layout directory, oci-archive or docker save tarball) as an "
            "application image for containers.")

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="OCI layout directory or tarball (.tar, .tar.gz)")
        parser.add_argument("--name", help="repository[:tag] in the catalogue (default: from the archive)")

    def handle(self, *args, path: Path, name: str | None, **options):
        try:
            image, imported = import_image(path, name=name, source_label="cli",
                                           progress=lambda msg: self.stdout.write(f"  {msg}"))
        except ImageImportError as exc:
            raise CommandError(f"{path} was not imported: {exc}") from exc
        for note in imported.notes:
            self.stdout.write(self.style.WARNING(f"  note: {note}"))
        summary = imported.summary
        command = " ".join(summary["entrypoint"] + summary["cmd"]) or "(none)"
        self.stdout.write(self.style.SUCCESS(
            f"{image.name} (image #{image.pk}): {image.size_bytes / 2**20:.1f} MiB, "
            f"{imported.image_id[:19]}…; runs {command} as {summary['user'] or 'root'}"
            + (f", ports {', '.join(summary['exposed_ports'])}" if summary["exposed_ports"] else "")
        ))
