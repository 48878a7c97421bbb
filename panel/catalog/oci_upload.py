"""Uploaded image archives are received into the image store itself (``<image_dir>/oci/
.uploads/``, mode 0700), not Django's temporary directory: an image is often larger than
/tmp (a tmpfs on many hosts), and the import then writes nothing outside the store. The file
is deleted when the request ends, imported or not."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from workers.images.oci import OCI_DIR

UPLOADS = ".uploads"


def upload_dir() -> Path:
    directory = settings.BERTH_IMAGE_DIR / OCI_DIR / UPLOADS
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.parent.chmod(0o700)
    return directory


class StoreUploadedFile(UploadedFile):
    """An upload being written to a temporary file in the image store."""

    def __init__(self, name: str, content_type: str, charset: str | None,
                 content_type_extra: dict | None = None, directory: Path | None = None) -> None:
        file = tempfile.NamedTemporaryFile(suffix=".upload", dir=directory or upload_dir())  # noqa: SIM115 (the upload owns it)
        super().__init__(file, name, content_type, 0, charset, content_type_extra)

    def temporary_file_path(self) -> str:
        return self.file.name

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone
            self.file.close()


class ImageStoreUploadHandler(FileUploadHandler):
    """Set as the request's only upload handler before its body is read. ``directory`` (a
    callable giving the directory) receives uploads elsewhere in the store (installer ISOs)."""

    def __init__(self, request=None, directory: Callable[[], Path] | None = None) -> None:
        super().__init__(request)
        self.directory = directory

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.file = StoreUploadedFile(self.file_name, self.content_type, self.charset,
                                      self.content_type_extra,
                                      directory=self.directory() if self.directory else None)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile:
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        if hasattr(self, "file"):
            self.file.close()
