"""Application images from OCI: importing one into the image store and the catalogue
(``manage.py import_image``, the staff page), and what such an image takes at order time (a
command that replaces its Cmd, environment variables added to its Env).

The unpacking itself is ``workers/images/oci.py`` (no Django there); this module names the
image in the catalogue, refuses a name already used by other content, and audits the import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction

from panel.audit import services as audit
from panel.catalog.models import Image, InstanceKind
from workers.images.oci import OCI_DIR, ImportedImage, OciImportError, import_oci

# What an order may give an application image (the API's, the form's and the service's limits)
MAX_ARGS = 64
MAX_VARS = 64
MAX_TEXT = 4096  # one argument, one value
MAX_TOTAL = 32768  # all arguments, or all names and values, together
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ImageImportError(Exception):
    """The import was refused; the message says why, for the admin."""


def import_image(source: Path | BinaryIO, *, name: str | None = None, actor=None,
                 source_label: str = "cli", progress: Callable[[str], None] = lambda _m: None,
                 image_dir: Path | None = None) -> tuple[Image, ImportedImage]:
    """Import the OCI image in ``source`` (a layout directory, an oci-archive or docker save
    tarball, as a path or an open file) and add it to the catalogue as ``name`` (from the
    archive when not given). The same image under the same name again returns the row it has.
    Raises ImageImportError; nothing is written then (in the store or the database)."""
    image_dir = image_dir or settings.BERTH_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)

    def check(full_name: str, image_id: str) -> None:
        other = Image.objects.filter(name=full_name, kind=InstanceKind.CONTAINER).first()
        if other is not None and other.digest != image_id:
            raise ImageImportError(
                f"An image named {full_name} already exists with other contents"
                f"{f' ({other.digest[:19]}…)' if other.digest else ''}: import this one "
                "under another tag.")

    try:
        imported = import_oci(source, image_dir, name=name, progress=progress, check=check)
    except OciImportError as exc:
        raise ImageImportError(str(exc)) from None
    path = str(Path(OCI_DIR) / imported.built.path.name)
    config = {**imported.summary, "notes": list(imported.notes)}
    try:
        with transaction.atomic():
            image, created = Image.objects.get_or_create(
                name=imported.name, kind=InstanceKind.CONTAINER,
                defaults={"path": path, "size_bytes": imported.built.size_bytes,
                          "checksum": imported.built.checksum, "source": Image.Source.OCI,
                          "digest": imported.image_id, "config": config},
            )
            if not created and image.digest != imported.image_id:
                raise ImageImportError(f"An image named {imported.name} was imported meanwhile "
                                       "with other contents: import this one under another tag.")
            if created:
                notes = f" ({'; '.join(imported.notes)})" if imported.notes else ""
                audit.record(
                    action="image.import", source=source_label, actor=actor, target=image,
                    message=f"Imported {image.name}: {image.size_bytes / 2**20:.1f} MiB, "
                            f"{imported.image_id[:19]}…{notes}.",
                    data={"digest": imported.image_id, "manifest": imported.manifest_digest,
                          "reused": imported.reused},
                )
    except IntegrityError:  # the same name, imported by someone else at the same moment
        image = Image.objects.get(name=imported.name, kind=InstanceKind.CONTAINER)
        if image.digest != imported.image_id:
            raise ImageImportError(f"An image named {imported.name} was imported meanwhile "
                                   "with other contents: import this one under another tag.") from None
    return image, imported


# --- what an order may give an application image --------------------------------------------

def clean_command(value: object) -> list[str]:
    """A command line as a list of strings (the first is the program). Raises ValueError."""
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise ValueError("Give the command as a list of strings, the program first.")
    if not value or not value[0]:
        raise ValueError("The command needs at least a program.")
    if len(value) > MAX_ARGS:
        raise ValueError(f"At most {MAX_ARGS} arguments.")
    if any(len(arg) > MAX_TEXT for arg in value) or sum(len(arg) for arg in value) > MAX_TOTAL:
        raise ValueError(f"An argument is at most {MAX_TEXT} characters, all of them at most "
                         f"{MAX_TOTAL}.")
    if any("\0" in arg for arg in value):
        raise ValueError("An argument cannot contain a NUL character.")
    return value


def clean_env(value: object) -> dict[str, str]:
    """Environment variables as an object of strings. Raises ValueError."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("Give the environment as an object of strings: {\"NAME\": \"value\"}.")
    if len(value) > MAX_VARS:
        raise ValueError(f"At most {MAX_VARS} environment variables.")
    for name, text in value.items():
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"{name[:40]!r} is not a variable name: letters, digits and '_', "
                             "not starting with a digit, at most 128 characters.")
        if len(text) > MAX_TEXT or "\0" in text:
            raise ValueError(f"The value of {name} is longer than {MAX_TEXT} characters or "
                             "contains a NUL character.")
    if sum(len(k) + len(v) for k, v in value.items()) > MAX_TOTAL:
        raise ValueError(f"The environment is larger than {MAX_TOTAL} characters.")
    return value


def app_option_errors(image: Image, *, command: object, env: object) -> dict[str, str]:
    """Why ``command`` and ``env`` cannot be ordered with ``image``, by field (empty: fine)."""
    errors: dict[str, str] = {}
    for field, value, clean in (("command", command, clean_command), ("env", env, clean_env)):
        if value is None or value == {}:
            continue
        if not image.is_app:
            errors[field] = (f"{image.name} is a system image; only application images "
                             "(imported OCI images) take a command or environment variables.")
            continue
        try:
            clean(value)
        except ValueError as exc:
            errors[field] = str(exc)
    return errors
