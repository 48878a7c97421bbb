"""The root password and SSH keys of a container, written into its fresh writable layer.

Applied when the layer is new (create, rebuild), before the first boot, as files of the
overlay's upper directory: ``/etc/shadow`` (the image's, with root's hash replaced) and
``/root/.ssh/authorized_keys``. After that they are the customer's files: a password changed
inside is not overwritten by a later start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from workers.drivers.base import DriverError

SHA512_CRYPT = re.compile(r"^\$6\$(rounds=[0-9]{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$")
SSH_KEY = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n\0]*)?$")
DEFAULT_SHADOW_TAIL = "19000:0:99999:7:::"


def check(root_password: str, ssh_keys: tuple[str, ...]) -> None:
    """Refuse what could not be applied, with a sentence for people."""
    if root_password and not SHA512_CRYPT.match(root_password):
        raise DriverError("the root password must be given as a SHA-512 crypt hash ($6$...)")
    for key in ssh_keys:
        if not SSH_KEY.match(key.strip()):
            raise DriverError(f"not an SSH public key: {key[:40]!r}")


def apply(upper: Path, image_rootfs: Path, root_uid: int, root_password: str,
          ssh_keys: tuple[str, ...]) -> None:
    """Write the credentials into ``upper`` (owned by the container's root, ids shifted)."""
    if root_password:
        lower = image_rootfs / "etc" / "shadow"
        lines = lower.read_text().splitlines() if lower.is_file() else []
        entry = f"root:{root_password}:"
        for i, line in enumerate(lines):
            if line.startswith("root:"):
                fields = line.split(":")
                lines[i] = ":".join([fields[0], root_password, *fields[2:]])
                break
        else:
            lines.insert(0, entry + DEFAULT_SHADOW_TAIL)
        _dir(upper, image_rootfs, "etc", root_uid, 0o755)
        st = lower.stat() if lower.is_file() else None
        _file(upper / "etc" / "shadow", "\n".join(lines) + "\n",
              st.st_mode & 0o7777 if st else 0o600, root_uid + (st.st_uid if st else 0),
              root_uid + (st.st_gid if st else 0))
    if ssh_keys:
        _dir(upper, image_rootfs, "root", root_uid, 0o700)
        _dir(upper, image_rootfs, "root/.ssh", root_uid, 0o700)
        _file(upper / "root" / ".ssh" / "authorized_keys",
              "".join(key.strip() + "\n" for key in ssh_keys), 0o600, root_uid, root_uid)


def _dir(upper: Path, image_rootfs: Path, rel: str, root_uid: int, default_mode: int) -> None:
    """``upper/rel`` as the image has it (mode, owner), so the merged view does not change."""
    target = upper / rel
    if target.is_dir():
        return
    try:
        st = (image_rootfs / rel).stat()
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = default_mode, 0, 0
    target.mkdir()
    os.chown(target, root_uid + uid, root_uid + gid)
    os.chmod(target, mode)


def _file(path: Path, text: str, mode: int, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
