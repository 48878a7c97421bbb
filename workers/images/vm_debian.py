"""The ``debian-12`` VM image: a debootstrap tree on an ext4 disk, booted with Debian's kernel.

systemd is the init (it handles the ACPI power button through logind, so graceful shutdown
works), with a login prompt on the serial console (``console=ttyS0``), systemd-networkd and
OpenSSH. The disk is made with ``mkfs.ext4 -d`` from the tree (no loop mount) and converted to
qcow2; instances get an overlay of it. Berth's initramfs (workers/images/vm_boot.py) mounts the
disk and, before switching to systemd, writes the instance's hostname and a networkd file from
the kernel command line, and — once per config id, so later changes by the customer stick —
the root password hash and SSH keys from the config disk. SSH host keys are generated at each
instance's first boot, not baked into the image, so no two instances share them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from workers.images.base import BuiltImage, Progress
from workers.images.vm_boot import ImageBuildError, build_initramfs, fetch_kernel, run
from workers.images.vm_tiny import finish_image, load_built

NAME = "debian-12"
BUILDER_VERSION = 2
SUITE = "bookworm"
DISK_SIZE = "2G"
PACKAGES = ("systemd-sysv", "udev", "dbus", "openssh-server", "iproute2", "procps",
            "less", "ca-certificates")
CMDLINE = "console=ttyS0 root=/dev/vda net.ifnames=0 panic=-1 quiet"

SSH_KEYGEN_UNIT = """[Unit]
Description=Generate this instance's SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def apt_mirror() -> str:
    """The Debian mirror the host's own apt uses (no address is baked into Berth)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    text = sources.read_text() if sources.exists() else ""
    legacy = Path("/etc/apt/sources.list")
    text += legacy.read_text() if legacy.exists() else ""
    for match in re.finditer(r"(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text):
        uri = match.group(1)
        if "security" not in uri and uri.startswith(("http://", "https://", "file:")):
            return uri
    raise ImageBuildError("no Debian mirror found in the host's apt sources")


def _configure_tree(tree: Path) -> None:
    """Make the debootstrap tree a VM image: fstab, networkd, first-boot keys, no secrets."""
    (tree / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (tree / "etc/hostname").write_text("debian\n")
    (tree / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    # Empty machine-id: systemd makes a unique one on each instance's first boot.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (tree / "etc/systemd/system/berth-ssh-keygen.service").write_text(SSH_KEYGEN_UNIT)
    run(["chroot", str(tree), "systemctl", "enable", "systemd-networkd",
         "berth-ssh-keygen.service"])
    shutil.rmtree(tree / "var/lib/apt/lists", ignore_errors=True)
    (tree / "var/lib/apt/lists/partial").mkdir(parents=True)
    shutil.rmtree(tree / "var/cache/apt/archives", ignore_errors=True)
    (tree / "var/cache/apt/archives/partial").mkdir(parents=True)


# The container image of the same name owns <image_dir>/debian-12; the VM image lives beside it.
DIRECTORY = f"{NAME}-vm"


def build_vm_debian(image_dir: Path, progress: Progress) -> BuiltImage:
    """Build ``<image_dir>/debian-12-vm`` unless a current copy is already there (then a no-op)."""
    dest = image_dir / DIRECTORY
    built = load_built(dest, BUILDER_VERSION)
    if built is not None:
        progress(f"{NAME}: already built ({built.checksum[:19]})")
        return built
    image_dir.mkdir(parents=True, exist_ok=True)
    kernel = fetch_kernel(image_dir / ".cache", progress)
    work = image_dir / f".{DIRECTORY}.build"
    tree = image_dir / ".cache" / f"{DIRECTORY}-tree"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    work.mkdir()
    try:
        progress(f"{NAME}: debootstrap {SUITE} (a minute or two)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(tree), apt_mirror()])
        progress(f"{NAME}: configuring the system")
        _configure_tree(tree)
        progress(f"{NAME}: making the {DISK_SIZE} ext4 disk")
        raw = work / "disk.raw"
        run(["truncate", "-s", DISK_SIZE, str(raw)])
        run(["mkfs.ext4", "-q", "-L", "berth-root", "-d", str(tree), str(raw)])
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
             str(work / "disk.qcow2")])
        raw.unlink()
        progress(f"{NAME}: kernel {kernel.version} and initramfs")
        shutil.copyfile(kernel.vmlinux, work / "vmlinux")
        build_initramfs(work / "initrd.img", kernel, tiny_userland=False)
        progress(f"{NAME}: checksumming")
        built = finish_image(work, dest, {
            "name": NAME,
            "builder_version": BUILDER_VERSION,
            "kind": "vm",
            "kernel": "vmlinux",
            "initrd": "initrd.img",
            "disk": "disk.qcow2",
            "disk_format": "qcow2",
            "cmdline": CMDLINE,
            "kernel_version": kernel.version,
            "login": "login prompt on ttyS0 (root, with the instance's password)",
            "prompt": "login: ",
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
    progress(f"{NAME}: built, {built.size_bytes >> 20} MiB, {built.checksum[:19]}")
    return built
