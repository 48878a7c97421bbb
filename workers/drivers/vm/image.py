"""A built VM image as the driver sees it: the files and boot settings in its metadata.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig, ImageSpec


@dataclass(frozen=True)
class VmImage:
    name: str
    path: Path
    kernel: Path | None  # None for an installer ISO (``iso`` set)
    initrd: Path | None
    disk: Path | None  # the base disk instances get an overlay of; None for an ISO
    disk_format: str  # "qcow2" | "raw": given explicitly as the overlay's backing format
    cmdline: str  # the image's own kernel arguments; the driver appends the instance's
    checksum: str
    # An installer ISO (workers/images/iso.py): the instance gets an empty disk and boots the
    # ISO from a CD-ROM until something bootable is on its disk; no kernel, no config disk.
    iso: Path | None = None

    @property
    def is_installer(self) -> bool:
        return self.iso is not None

    @classmethod
    def load(cls, path: Path) -> VmImage:
        try:
            meta = json.loads((path / "metadata.json").read_text())
        except FileNotFoundError as exc:
            raise DriverError(f"VM image {path.name!r} is not built on this host ({path})") from exc
        except ValueError as exc:
            raise DriverError(f"VM image {path.name!r} has unreadable metadata: {exc}") from exc
        if meta.get("kind") != "vm":
            raise DriverError(f"image {path.name!r} is not a VM image")
        if meta.get("boot") == "iso":
            iso = path / meta["iso"]
            if not iso.is_file():
                raise DriverError(f"installer ISO {meta['name']!r} is missing from {path}")
            return cls(name=meta["name"], path=path, kernel=None, initrd=None, disk=None,
                       disk_format="", cmdline="", checksum=meta.get("checksum", ""), iso=iso)
        return cls(
            name=meta["name"],
            path=path,
            kernel=path / meta["kernel"],
            initrd=path / meta["initrd"],
            disk=path / meta["disk"],
            disk_format=meta["disk_format"],
            cmdline=meta.get("cmdline", "console=ttyS0"),
            checksum=meta.get("checksum", ""),
        )

    @classmethod
    def for_spec(cls, host: HostConfig, spec: ImageSpec) -> VmImage:
        """The image a spec names, checked against the checksum the panel expects (if any)."""
        path = Path(spec.path) if spec.path else Path(spec.name)
        if not path.is_absolute():
            path = host.image_dir / path
        image = cls.load(path)
        if spec.checksum and image.checksum and spec.checksum != image.checksum:
            raise DriverError(
                f"image {spec.name!r} on this host has checksum {image.checksum[:19]}…, "
                f"the panel expects {spec.checksum[:19]}…: rebuild the image on this host"
            )
        return image
