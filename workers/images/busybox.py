"""The ``busybox`` container image: Debian's static busybox, its applet links and a minimal /etc.

PID 1 is the busybox login shell on the console (``echo $$`` prints 1); see ImageConfig.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from workers.images.base import BuiltImage, ImageConfig, Progress, build_cached

NAME = "busybox"
BUSYBOX = Path("/bin/busybox")  # from Debian's busybox-static: no shared libraries needed
CONFIG = ImageConfig(
    init=("/bin/sh", "-l"),
    env={"PATH": "/bin:/sbin:/usr/bin:/usr/sbin", "HOME": "/root", "TERM": "xterm-256color"},
    stop_signal="SIGTERM",
    console_shell=True,
)
DIRS = {  # path: mode
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
    "root": 0o700, "tmp": 0o1777, "var": 0o755, "var/log": 0o755, "home": 0o755,
    "mnt": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755,
}
FILES = {  # path: (mode, content)
    "etc/passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
    "etc/group": (0o644, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
    "etc/shadow": (0o600, "root:*:19000:0:99999:7:::\n"),
    "etc/hostname": (0o644, "busybox\n"),  # placeholder: the driver writes the ordered name
    "etc/hosts": (0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    "etc/profile": (0o644, (
        "export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n"
        "export PS1='\\h:\\w# '\n"
        "umask 022\n"
    )),
}


def build_busybox(image_dir: Path, progress: Progress, *, force: bool = False) -> BuiltImage:
    """Build (or return the cached) busybox image in ``image_dir/busybox``."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install Debian's busybox-static")

    def populate(rootfs: Path) -> None:
        progress(f"{NAME}: installing {BUSYBOX} and its applet links")
        _populate(rootfs)

    return build_cached(image_dir, NAME, CONFIG, progress, populate, force=force)


def _populate(rootfs: Path) -> None:
    for rel, mode in DIRS.items():
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / rel, mode)  # mkdir's mode is filtered by the umask
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for rel in applets:
        if "/" not in rel or rel == "bin/busybox":  # e.g. "linuxrc": only for initramfs use
            continue
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to("/bin/busybox")
    for rel, (mode, content) in FILES.items():
        (rootfs / rel).write_text(content)
        os.chmod(rootfs / rel, mode)
