"""The ``debian-12`` container image: ``debootstrap --variant=minbase bookworm`` plus sysvinit.

"A real init": minbase has none, and systemd would need a writable, delegated cgroup tree
inside the container (impossible on the cgroup v1 hosts we run on) and ten times the size.
sysvinit-core is Debian's own small init: it runs the rc scripts, respawns a login on the
console (agetty on /dev/console, root logged in automatically: the panel already checked who
opens the console), and shuts down cleanly on SIGPWR (inittab "powerfail"), which is the
driver's stop signal for this image. Built once (~30 s), then returned from the cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from workers.images.base import BuiltImage, ImageConfig, Progress, build_cached

NAME = "debian-12"
SUITE = "bookworm"
PACKAGES = ("sysvinit-core", "iproute2", "iputils-ping", "procps")
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CONFIG = ImageConfig(
    init=("/sbin/init",),
    env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "TERM": "xterm-256color"},
    stop_signal="SIGPWR",
)
# rc scripts for hardware, the root filesystem or host-wide settings: the host's business
DISABLED_SCRIPTS = ("checkroot.sh", "checkroot-bootclean.sh", "checkfs.sh", "umountfs",
                    "umountroot", "hwclock.sh", "brightness", "procps", "bootlogs")
INITTAB = """\
# Berth container: one login on /dev/console, no virtual terminals; SIGPWR shuts down.
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
p0::powerfail:/sbin/init 0
co:2345:respawn:/sbin/agetty --noclear --local-line --autologin root console 115200 xterm-256color
"""


def find_mirror(sources: tuple[Path, ...] = SOURCES) -> str:
    """The Debian mirror apt on this host uses (deb822 or one-line format)."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
            uri = match.group(1)
            if not uri.rstrip("/").endswith("-security"):
                return uri
    return DEFAULT_MIRROR


def build_debian(image_dir: Path, progress: Progress, *, force: bool = False,
                 mirror: str | None = None) -> BuiltImage:
    """Build (or return the cached) debian-12 image in ``image_dir/debian-12``."""
    if shutil.which("debootstrap") is None:
        raise FileNotFoundError("debootstrap is missing: apt-get install debootstrap")

    def populate(rootfs: Path) -> None:
        source = mirror or find_mirror()
        progress(f"{NAME}: debootstrap {SUITE} (minbase) from {source}")
        _debootstrap(rootfs, source, progress)
        progress(f"{NAME}: configuring init and console")
        _configure(rootfs)

    return build_cached(image_dir, NAME, CONFIG, progress, populate, force=force)


def _debootstrap(rootfs: Path, mirror: str, progress: Progress) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
            str(rootfs), mirror]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-5:]
            if line.startswith(("I: ", "W: ", "E: ")):
                progress(f"{NAME}: {line[3:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({proc.returncode}): {' | '.join(tail)}")


def _configure(rootfs: Path) -> None:
    (rootfs / "etc/inittab").write_text(INITTAB)
    (rootfs / "etc/hostname").write_text("debian\n")  # placeholder: the driver writes the name
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    for script in DISABLED_SCRIPTS:
        if (rootfs / "etc/init.d" / script).exists():
            subprocess.run(["chroot", str(rootfs), "update-rc.d", "-f", script, "remove"],
                           check=True, capture_output=True)
    # the package cache and lists are re-fetched by apt inside the container when needed
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file() and entry.name != "lock":
                entry.unlink()
