"""The boot pieces every Berth VM image shares: Debian's kernel and a busybox initramfs.

The kernel comes from the host's apt sources (``linux-image-amd64``'s versioned package, no
internet image). QEMU is given the uncompressed ``vmlinux`` (PVH entry point), which skips the
in-guest xz decompression that costs seconds under TCG. The initramfs is Berth's tiny guest
agent: it loads the virtio modules, configures the network and hostname from the kernel
command line (``berth.ip=``, ``berth.gw=``, ``berth.hostname=``, ``berth.mac=``), applies
secrets (root password hash, SSH keys) from a read-only ISO config disk on ``/dev/vdb``, then
either stays the root (tiny image: busybox init) or switches to the disk's real init
(``root=/dev/vda``: debian-12 image).
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.images.base import Progress

BUSYBOX = Path("/bin/busybox")  # from busybox-static: no shared libraries needed in the guest

# virtio for the disk/NIC/balloon, isofs for the config disk, button+evdev so the ACPI power
# button reaches userspace (graceful shutdown), ext4 (+ the crc32c its journal needs) for
# images with a root disk. Dependencies are added from each module's own modinfo.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "isofs",
    "button",
    "evdev",
    "crc32c_generic",
    "ext4",
)


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class KernelPackage:
    version: str  # e.g. "6.1.0-57-amd64"
    root: Path  # the package unpacked with dpkg -x
    vmlinux: Path  # uncompressed ELF kernel

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def run(cmd: list[str], *, cwd: Path | None = None, input: bytes | None = None) -> str:
    """Run a build command; raise ImageBuildError with its stderr when it fails."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise ImageBuildError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def kernel_version() -> str:
    """Version of the kernel ``linux-image-amd64`` depends on in the host's apt lists."""
    out = run(["apt-cache", "depends", "linux-image-amd64"])
    match = re.search(r"Depends: linux-image-(\d[^\s]*-amd64)", out)
    if not match:
        raise ImageBuildError(
            "apt knows no linux-image-amd64 (run apt-get update on the host first)"
        )
    return match.group(1)


def fetch_kernel(cache_dir: Path, progress: Progress) -> KernelPackage:
    """Download and unpack Debian's kernel package once; later calls reuse the unpacked tree."""
    version = kernel_version()
    dest = cache_dir / f"linux-{version}"
    vmlinux = dest / "vmlinux"
    if vmlinux.exists():
        return KernelPackage(version, dest / "pkg", vmlinux)
    progress(f"downloading linux-image-{version}")
    work = cache_dir / f".linux-{version}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run(["apt-get", "download", "-q", f"linux-image-{version}"], cwd=work)
    (deb,) = work.glob("linux-image-*.deb")
    progress(f"unpacking {deb.name}")
    run(["dpkg", "-x", str(deb), str(work / "pkg")])
    deb.unlink()
    progress("extracting the uncompressed kernel")
    vmlinuz = (work / "pkg" / "boot" / f"vmlinuz-{version}").read_bytes()
    start = vmlinuz.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageBuildError(f"vmlinuz-{version} is not xz-compressed; cannot extract vmlinux")
    (work / "vmlinux").write_bytes(lzma.LZMADecompressor().decompress(vmlinuz[start:]))
    os.replace(work, dest)
    return KernelPackage(version, dest / "pkg", vmlinux)


def _module_index(modules_dir: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".ko"): p for p in modules_dir.rglob("*.ko")}


def _module_depends(path: Path) -> list[str]:
    # The .modinfo section holds NUL-separated "key=value" strings; depends= lists the modules
    # that must be loaded first (the package ships no modules.dep: depmod runs at install).
    match = re.search(rb"\x00depends=([^\x00]*)\x00", path.read_bytes())
    if not match or not match.group(1):
        return []
    return match.group(1).decode().split(",")


def module_load_order(modules_dir: Path, names: tuple[str, ...]) -> list[Path]:
    """The given modules and their dependencies, each after everything it depends on."""
    index = _module_index(modules_dir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            raise ImageBuildError(f"kernel module {name} not found in {modules_dir}")
        for dep in _module_depends(path):
            visit(dep)
        order.append(path)

    for name in names:
        visit(name)
    return order


class Cpio:
    """A deterministic newc cpio archive (no timestamps, fixed owners), built in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, 0o040000 | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name.strip("/"), 0o020000 | mode, rdev=(major, minor))

    def gzipped(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return gzip.compress(self._buf.getvalue(), compresslevel=6, mtime=0)


GUEST_INIT = r"""#!/bin/sh
# Berth guest init: runs as PID 1 from the initramfs on every boot.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}";; esac; done; }
if [ -n "$(arg berth.probe)" ]; then
    # Capability check (workers/drivers/vm/capabilities.py): reaching userspace is the proof.
    echo "BERTH-PROBE-OK"
    poweroff -f
fi
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
for m in $(cat /etc/berth/modules); do insmod "/lib/modules/$m.ko" 2>/dev/null; done

HOST=$(arg berth.hostname); IP=$(arg berth.ip); GW=$(arg berth.gw); ROOT=$(arg root)
echo "berth: ${HOST:-guest} ${IP:-no address} via ${GW:-no gateway}"

# Secrets come on a read-only ISO (config disk) rather than the command line, which every
# process in the guest can read. Applied once per config id, so a customer's later password
# change survives reboots of a disk image.
CFG=/run/berth-config
mkdir -p $CFG
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done
mount -t iso9660 -o ro /dev/vdb $CFG 2>/dev/null
apply_secrets() {  # $1 = root of the system to configure
    [ -f $CFG/berth-config ] || return 0
    id=$(cat $CFG/config-id 2>/dev/null)
    [ -n "$id" ] && [ "$(cat $1/var/lib/berth/config-id 2>/dev/null)" = "$id" ] && return 0
    if [ -s $CFG/root-password-hash ]; then
        hash=$(cat $CFG/root-password-hash)
        sed -i "s|^root:[^:]*:|root:$hash:|" $1/etc/shadow
        echo "berth: root password set"
    fi
    if [ -s $CFG/authorized_keys ]; then
        mkdir -p $1/root/.ssh && chmod 700 $1/root/.ssh
        cp $CFG/authorized_keys $1/root/.ssh/authorized_keys
        chmod 600 $1/root/.ssh/authorized_keys
        echo "berth: $(grep -c . $CFG/authorized_keys) SSH key(s) installed"
    fi
    mkdir -p $1/var/lib/berth && echo "$id" > $1/var/lib/berth/config-id
}

if [ -n "$ROOT" ]; then
    mkdir -p /newroot
    i=0; while [ ! -b "$ROOT" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    if ! mount -t ext4 -o rw "$ROOT" /newroot; then
        echo "berth: cannot mount $ROOT; dropping to a shell"; exec sh
    fi
    [ -n "$HOST" ] && echo "$HOST" > /newroot/etc/hostname
    if [ -n "$IP" ]; then
        mkdir -p /newroot/etc/systemd/network
        printf '[Match]\nName=eth0\n\n[Network]\nAddress=%s\n%s\n' "$IP" \
            "${GW:+Gateway=$GW}" > /newroot/etc/systemd/network/10-berth.network
    fi
    apply_secrets /newroot
    umount $CFG 2>/dev/null
    umount /dev/pts /sys /proc
    mount --move /dev /newroot/dev
    exec switch_root /newroot /sbin/init
fi

[ -n "$HOST" ] && hostname "$HOST" && echo "$HOST" > /etc/hostname
ip link set lo up
if [ -n "$IP" ]; then
    ip link set eth0 up && ip addr add "$IP" dev eth0
    [ -n "$GW" ] && ip route add default via "$GW" dev eth0
fi
apply_secrets ""
umount $CFG 2>/dev/null
exec /sbin/init
"""

TINY_INITTAB = """::sysinit:/etc/rc.tiny
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

TINY_RC = """#!/bin/sh
# The ACPI power button (virsh shutdown, Berth's graceful stop) powers the guest off cleanly.
acpid -c /etc/acpi
echo "Berth tiny guest $(hostname) ready"
"""

POWER_BUTTON_HANDLER = "#!/bin/sh\necho 'berth: power button pressed, powering off'\npoweroff\n"


def build_initramfs(out: Path, kernel: KernelPackage, *, tiny_userland: bool) -> None:
    """Write the gzipped initramfs: busybox, modules, init; plus a tiny userland if asked."""
    cpio = Cpio()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "mnt",
              "root", "etc/berth", "lib/modules", "var/lib", "var/log"):
        cpio.dir(d)
    cpio.symlink("var/run", "/run")  # acpid's pid file; it exits at start without one
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    applets = run([str(BUSYBOX), "--list-full"]).split()
    for applet in sorted(set(applets)):
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    names = []
    for path in module_load_order(kernel.modules_dir, GUEST_MODULES):
        name = path.name.removesuffix(".ko")
        names.append(name)
        cpio.file(f"lib/modules/{name}.ko", path.read_bytes())
    cpio.file("etc/berth/modules", ("\n".join(names) + "\n").encode())
    cpio.file("init", GUEST_INIT.encode(), 0o755)
    if tiny_userland:
        cpio.file("etc/inittab", TINY_INITTAB.encode())
        cpio.file("etc/rc.tiny", TINY_RC.encode(), 0o755)
        cpio.file("etc/acpi/PWRF/00000080", POWER_BUTTON_HANDLER.encode(), 0o755)
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        cpio.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
        cpio.file("etc/group", b"root:x:0:\n")
        cpio.file("etc/profile", b"export PS1='\\h# ' HOME=/root\n")
    out.write_bytes(cpio.gzipped())


def write_metadata(image_path: Path, metadata: dict[str, object]) -> None:
    """Write metadata.json last and atomically: its presence marks a finished image."""
    tmp = image_path / ".metadata.json.tmp"
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, image_path / "metadata.json")
