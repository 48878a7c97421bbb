"""Installer ISOs built locally for the tests (isolinux + xorriso, from Debian packages that
``scripts/bootstrap.sh test`` installs): a bootable one with the tiny guest's kernel and
initramfs and a serial console, a data ISO without a boot record, a UEFI-only one, and the
bytes of a boot sector that stands for "an installed system" on the VM's disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from workers.images.vm_boot import fetch_kernel

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")  # package isolinux
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")  # package syslinux-common
ISO_HOSTNAME = "isoguest"  # on the ISO's kernel command line: proof the guest came from the ISO
ISO_READY = f"Berth tiny guest {ISO_HOSTNAME} ready".encode()
ISO_PROMPT = f"{ISO_HOSTNAME}# ".encode()

# A boot sector standing for "the installer put a boot loader on the disk": it writes its
# message straight to the first serial port (0x3f8) and halts. SeaBIOS boots it only when the
# disk comes first in the boot order and carries the 55 AA signature.
DISK_BOOT_MESSAGE = b"BERTH DISK BOOT OK\r\n"
_CODE = bytes([
    0xFA, 0xFC,              # cli; cld
    0x31, 0xC0, 0x8E, 0xD8,  # xor ax,ax; mov ds,ax
    0xBE, 0x17, 0x7C,        # mov si,0x7c17 (the message)
    0xBA, 0xF8, 0x03,        # mov dx,0x3f8
    0xAC,                    # next: lodsb
    0x84, 0xC0, 0x74, 0x03,  # test al,al; jz halt
    0xEE, 0xEB, 0xF8,        # out dx,al; jmp next
    0xF4, 0xEB, 0xFD,        # halt: hlt; jmp halt
])
BOOT_SECTOR_HEAD = _CODE + DISK_BOOT_MESSAGE + b"\0"


def _octal(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


def install_boot_sector_command(device: str = "/dev/vda") -> bytes:
    """A guest shell line that writes the boot sector to ``device`` (the message itself never
    appears in the echoed command: every byte is an octal escape)."""
    return (f"printf '{_octal(BOOT_SECTOR_HEAD)}' | dd of={device} bs=512 count=1 conv=sync "
            f"2>/dev/null; printf '\\125\\252' | dd of={device} bs=1 seek=510 count=2 "
            f"2>/dev/null; sync; echo INSTALLED-$((6*7))\n").encode()


def _xorriso(args: list[str], out: Path, root: Path) -> Path:
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-J", "-r", *args, "-o", str(out),
                    str(root)], check=True, capture_output=True)
    return out


def build_bootable_iso(out: Path, image_dir: Path, tiny_initrd: Path) -> Path:
    """An isolinux ISO: Debian's kernel (the tiny image's) + the tiny initramfs, console on
    ttyS0, hostname ``isoguest`` from the ISO's own kernel command line."""
    kernel = fetch_kernel(image_dir / ".cache", lambda _m: None)
    root = out.with_suffix(".root")
    shutil.rmtree(root, ignore_errors=True)
    (root / "isolinux").mkdir(parents=True)
    (root / "boot").mkdir()
    try:
        shutil.copyfile(ISOLINUX_BIN, root / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX_C32, root / "isolinux" / "ldlinux.c32")
        shutil.copyfile(kernel.root / "boot" / f"vmlinuz-{kernel.version}", root / "boot" / "vmlinuz")
        shutil.copyfile(tiny_initrd, root / "boot" / "initrd.img")
        (root / "isolinux" / "isolinux.cfg").write_text(
            "SERIAL 0 115200\nDEFAULT berth\nPROMPT 0\nTIMEOUT 1\nLABEL berth\n"
            "  KERNEL /boot/vmlinuz\n"
            f"  APPEND initrd=/boot/initrd.img console=ttyS0 panic=-1 berth.hostname={ISO_HOSTNAME}\n")
        return _xorriso(["-V", "BERTHTEST", "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                         "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"], out, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_small_bootable_iso(out: Path, volume: str = "SMALLBOOT") -> Path:
    """A BIOS-bootable isolinux ISO without a kernel (boots to isolinux's prompt): enough for
    the checks and the catalogue, quick to build."""
    root = out.with_suffix(".root")
    shutil.rmtree(root, ignore_errors=True)
    (root / "isolinux").mkdir(parents=True)
    try:
        shutil.copyfile(ISOLINUX_BIN, root / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX_C32, root / "isolinux" / "ldlinux.c32")
        (root / "isolinux" / "isolinux.cfg").write_text("SERIAL 0 115200\nPROMPT 1\n")
        return _xorriso(["-V", volume, "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                         "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"], out, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_data_iso(out: Path) -> Path:
    """An ISO 9660 image with files and no El Torito boot record."""
    root = out.with_suffix(".root")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        (root / "README.TXT").write_text("just data\n")
        return _xorriso(["-V", "DATA"], out, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_uefi_only_iso(out: Path) -> Path:
    """An ISO whose only El Torito entry is for UEFI: SeaBIOS could not boot it."""
    root = out.with_suffix(".root")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        (root / "efi.img").write_bytes(b"\0" * 65536)
        return _xorriso(["-V", "UEFIONLY", "-e", "efi.img", "-no-emul-boot"], out, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
