"""Building images into the shared image store and registering them in the catalogue."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from panel.catalog.models import Image, InstanceKind

# (name, kind) -> "module:function"; the builders live with the drivers and know nothing of Django.
BUILDERS: dict[tuple[str, str], str] = {
    ("busybox", InstanceKind.CONTAINER): "workers.images.busybox:build_busybox",
    ("debian-12", InstanceKind.CONTAINER): "workers.images.debian:build_debian",
    ("tiny", InstanceKind.VM): "workers.images.vm_tiny:build_vm_tiny",
    ("debian-12", InstanceKind.VM): "workers.images.vm_debian:build_vm_debian",
}


class UnknownImage(Exception):
    pass


def known_images() -> list[tuple[str, str]]:
    return sorted(BUILDERS)


def build_image(
    name: str, kind: str, *, progress: Callable[[str], None] = lambda _: None, image_dir: Path | None = None
) -> Image:
    """Build (or find cached) image ``name`` of ``kind`` and record its size and checksum."""
    try:
        target = BUILDERS[(name, kind)]
    except KeyError:
        choices = ", ".join(f"{n} ({k})" for n, k in known_images())
        raise UnknownImage(f"No builder for {name} ({kind}); known images: {choices}.") from None
    module_name, func_name = target.split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    image_dir = image_dir or settings.BERTH_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    built = builder(image_dir, progress)
    path = Path(built.path)
    relative = str(path.relative_to(image_dir)) if path.is_relative_to(image_dir) else str(path)
    image, _ = Image.objects.update_or_create(
        name=name,
        kind=kind,
        defaults={"path": relative, "size_bytes": built.size_bytes, "checksum": built.checksum},
    )
    return image
