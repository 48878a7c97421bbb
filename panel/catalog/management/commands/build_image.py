"""manage.py build_image NAME [--kind container|vm]: build an image and register it."""

from django.core.management.base import BaseCommand, CommandError

from panel.catalog.images import UnknownImage, build_image, known_images
from panel.catalog.models import InstanceKind


class Command(BaseCommand):
    help = "Build an image from Debian packages (cached) and add it to the catalogue."

    def add_arguments(self, parser):
        parser.add_argument("name", help="busybox, debian-12 or tiny")
        parser.add_argument("--kind", choices=InstanceKind.values, help="container or vm")

    def handle(self, *args, name, kind, **options):
        kinds = [kind] if kind else sorted({k for n, k in known_images() if n == name})
        if not kinds:
            raise CommandError(f"Unknown image {name!r}; known: {', '.join(sorted({n for n, _ in known_images()}))}.")
        for k in kinds:
            self.stdout.write(f"Building {name} ({k})…")
            try:
                image = build_image(name, k, progress=lambda msg: self.stdout.write(f"  {msg}"))
            except UnknownImage as exc:
                raise CommandError(str(exc)) from exc
            except Exception as exc:
                raise CommandError(f"Building {name} ({k}) failed: {exc}") from exc
            self.stdout.write(self.style.SUCCESS(
                f"{image.name} ({image.kind}): {image.size_bytes / 2**20:.1f} MiB, sha256 {image.checksum[:16]}…"
            ))
