"""Installer ISOs in the image store: checked (ISO 9660 with an El Torito boot record a BIOS
can boot), checksummed and kept as ``<image_dir>/iso/<sha256>/installer.iso`` beside a
``metadata.json`` that tells the VM driver to boot the instance from it (a CD-ROM and an empty
disk) instead of from a kernel and a base disk.

No Django here: ``panel/catalog/iso.py`` names the image in the catalogue. An ISO that is refused
leaves nothing in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ISO_DIR = "iso"
ISO_FILE = "installer.iso"
UPLOADS = ".uploads"
SECTOR = 2048
MAX_DESCRIPTORS = 64  # volume descriptors read before giving up on a terminator
SHA256_RE = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")
PLATFORMS = {0x00: "BIOS", 0x01: "PowerPC", 0x02: "Mac", 0xEF: "UEFI"}

Progress = Callable[[str], None]


class IsoError(Exception):
    """The file is not an ISO a Berth VM can boot, or is not the one expected; says why."""


@dataclass(frozen=True)
class IsoInfo:
    volume_id: str
    size_bytes: int
    boot_platforms: tuple[str, ...]  # of the bootable El Torito entries, e.g. ("BIOS", "UEFI")


@dataclass(frozen=True)
class StoredIso:
    path: Path  # the image's directory in the store
    checksum: str  # "sha256:<hex>" of the ISO file
    size_bytes: int
    info: IsoInfo
    reused: bool  # the same ISO was already in the store


def parse_sha256(value: str) -> str:
    """A sha256 as an admin gives it (hex, or ``sha256:hex``) → lower-case hex. ValueError."""
    match = SHA256_RE.match(value.strip())
    if not match:
        raise ValueError("A sha256 checksum is 64 hexadecimal digits (optionally after 'sha256:').")
    return match.group(2).lower()


def _read_sector(f, number: int) -> bytes:
    f.seek(number * SECTOR)
    return f.read(SECTOR)


def inspect_iso(path: Path) -> IsoInfo:
    """Read the volume descriptors and the El Torito boot catalogue; raise IsoError unless the
    file is an ISO 9660 image with at least one bootable entry for BIOS (Berth's VMs boot with
    SeaBIOS, so a UEFI-only ISO would never start)."""
    size = path.stat().st_size
    if size < 17 * SECTOR:
        raise IsoError(f"{size} bytes is too small for an ISO 9660 image (no volume descriptors): "
                       "this is not an ISO file.")
    volume_id = None
    catalog_sector = None
    with open(path, "rb") as f:
        for number in range(16, 16 + MAX_DESCRIPTORS):
            desc = _read_sector(f, number)
            if len(desc) < SECTOR or desc[1:6] != b"CD001":
                if volume_id is None:
                    raise IsoError("No ISO 9660 volume descriptor at sector 16: this is not an ISO "
                                   "file (a disk image or an archive, perhaps).")
                break
            kind = desc[0]
            if kind == 1 and volume_id is None:  # primary volume descriptor
                volume_id = desc[40:72].decode("ascii", "replace").strip()
            elif kind == 0 and desc[7:39].rstrip(b"\0 ") == b"EL TORITO SPECIFICATION":
                catalog_sector = struct.unpack_from("<I", desc, 71)[0]
            elif kind == 255:  # set terminator
                break
        if volume_id is None:
            raise IsoError("The ISO 9660 image has no primary volume descriptor.")
        if catalog_sector is None:
            raise IsoError("The ISO has no El Torito boot record: it is a data disc, not a "
                           "bootable installer.")
        if not 16 < catalog_sector < size // SECTOR:
            raise IsoError("The El Torito boot record points outside the image.")
        platforms = _boot_platforms(_read_sector(f, catalog_sector))
    if "BIOS" not in platforms:
        found = ", ".join(platforms) or "none"
        raise IsoError(f"The ISO has no bootable El Torito entry for BIOS (bootable entries: "
                       f"{found}); Berth's VMs boot with a BIOS (SeaBIOS), so it would not start.")
    return IsoInfo(volume_id=volume_id, size_bytes=size, boot_platforms=platforms)


def _boot_platforms(catalog: bytes) -> tuple[str, ...]:
    """Platforms of the bootable entries in an El Torito boot catalogue sector."""
    validation = catalog[:32]
    if len(validation) < 32 or validation[0] != 0x01 or validation[30:32] != b"\x55\xaa":
        raise IsoError("The El Torito boot catalogue is damaged (no validation entry).")
    if sum(struct.unpack("<16H", validation)) & 0xFFFF:
        raise IsoError("The El Torito boot catalogue is damaged (bad validation checksum).")
    platforms: list[str] = []

    def add(bootable: bool, platform: int) -> None:
        name = PLATFORMS.get(platform, f"platform {platform:#x}")
        if bootable and name not in platforms:
            platforms.append(name)

    add(catalog[32] == 0x88, validation[1])  # the initial/default entry
    offset = 64
    while offset + 32 <= len(catalog):
        header = catalog[offset]
        if header not in (0x90, 0x91):
            break
        platform, count = catalog[offset + 1], struct.unpack_from("<H", catalog, offset + 2)[0]
        offset += 32
        for _ in range(count):
            if offset + 32 > len(catalog):
                break
            add(catalog[offset] == 0x88, platform)
            offset += 32
        if header == 0x91:  # the last section
            break
    return tuple(platforms)


def _sha256(path: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            done += len(chunk)
            if done % (256 << 20) < len(chunk):
                progress(f"checksummed {done >> 20} MiB")
    return digest.hexdigest()


def iso_upload_dir(image_dir: Path) -> Path:
    """Where uploads are received: inside the store, so keeping one is a link, not a copy."""
    directory = image_dir / ISO_DIR / UPLOADS
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def store_iso(source: Path, image_dir: Path, *, name: str, expected_sha256: str = "",
              progress: Progress = lambda _m: None, source_is_ours: bool = False) -> StoredIso:
    """Check ``source`` and keep it in the store; raise IsoError and keep nothing otherwise.

    ``expected_sha256`` (hex, when given) must match the file. ``source_is_ours`` (an upload
    already inside the store) lets the store hard-link it instead of copying."""
    if not source.is_file():
        raise IsoError(f"{source} is not a file.")
    if expected_sha256:
        try:
            expected_sha256 = parse_sha256(expected_sha256)
        except ValueError as exc:
            raise IsoError(str(exc)) from None
    progress("checking the ISO 9660 volume and its El Torito boot record")
    inspect_iso(source)
    root = image_dir / ISO_DIR
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # QEMU (libvirt-qemu) opens the ISO below it
    work = root / f".{secrets.token_hex(8)}.tmp"
    work.mkdir(mode=0o755)
    try:
        target = work / ISO_FILE
        linked = False
        if source_is_ours:
            with contextlib.suppress(OSError):  # another file system: copy instead
                os.link(source, target)
                linked = True
        if not linked:
            progress("copying the ISO into the image store")
            shutil.copyfile(source, target)
        progress("checksumming")
        hexdigest = _sha256(target, progress)
        if expected_sha256 and hexdigest != expected_sha256:
            raise IsoError(f"Checksum mismatch: the file's sha256 is {hexdigest}, not the "
                           f"{expected_sha256} given. The file is damaged or not the one meant.")
        info = inspect_iso(target)  # the copy we keep is the one that counts
        target.chmod(0o644)
        checksum = f"sha256:{hexdigest}"
        dest = root / hexdigest
        if (dest / "metadata.json").exists():
            progress("the same ISO is already in the image store")
            return StoredIso(dest, checksum, info.size_bytes, info, reused=True)
        metadata = {
            "name": name, "kind": "vm", "boot": "iso", "iso": ISO_FILE, "checksum": checksum,
            "size_bytes": info.size_bytes, "volume_id": info.volume_id,
            "boot_platforms": list(info.boot_platforms),
        }
        (work / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(dest, ignore_errors=True)  # a half-written copy from a crash
        try:
            work.replace(dest)
        except OSError:  # stored meanwhile by a concurrent import of the same file
            if not (dest / "metadata.json").exists():
                raise
            return StoredIso(dest, checksum, info.size_bytes, info, reused=True)
        return StoredIso(dest, checksum, info.size_bytes, info, reused=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stored_iso(image_dir: Path, checksum: str) -> None:
    """Drop a stored ISO (its catalogue entry could not be written)."""
    hexdigest = checksum.removeprefix("sha256:")
    if SHA256_RE.match(hexdigest):
        shutil.rmtree(image_dir / ISO_DIR / hexdigest, ignore_errors=True)
