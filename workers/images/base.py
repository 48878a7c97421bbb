"""What an image is on disk: its rootfs tree, its checksum and how the container driver boots it.

Layout: ``<image_dir>/<name>/rootfs/`` holds the tree, ``<image_dir>/<name>/image.json`` holds
the build result (size, checksum) and the boot config (``ImageConfig``). A tree is built in a
temporary sibling directory and renamed into place, so a half-built image is never mistaken for
a cached one. Imported OCI images (``oci.py``) use the same layout below ``<image_dir>/oci/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

Progress = Callable[[str], None]
META = "image.json"


@dataclass(frozen=True)
class AppConfig:
    """An application image (imported from OCI): its process is the workload, run by Berth's
    small init (berth-init, PID 1), as the image's user, in its working directory.

    The command line is ``entrypoint + cmd``; an order may replace ``cmd`` (as ``docker run
    IMAGE COMMAND...`` does). ``volumes`` are directories kept across upgrades: ``/data`` and
    those the image declares (``VOLUME``), on the container's disk beside its writable layer.
    """

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()  # supplementary groups (the user's in the image's /etc/group)
    workdir: str = "/"
    volumes: tuple[str, ...] = ("/data",)
    exposed_ports: tuple[str, ...] = ()  # e.g. "8080/tcp"; informational (no NAT: own address)

    @classmethod
    def from_dict(cls, data: dict) -> AppConfig:
        tuples = ("entrypoint", "cmd", "groups", "volumes", "exposed_ports")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


@dataclass(frozen=True)
class ImageConfig:
    """How the container driver starts an image."""

    init: tuple[str, ...] = ("/sbin/init",)
    env: dict[str, str] = field(default_factory=dict)
    # Signal that asks PID 1 to shut down: SIGTERM for a shell or busybox init, SIGPWR for
    # sysvinit (its inittab "powerfail" entry runs the shutdown). For an application image,
    # berth-init forwards it to the workload (the image's STOPSIGNAL).
    stop_signal: str = "SIGTERM"
    # PID 1 is the interactive console shell itself (so `echo $$` prints 1); the driver then
    # installs a TERM trap through $ENV and helps the shell out of its line editor on stop.
    console_shell: bool = False
    # Set for application images: PID 1 is berth-init and the workload its child (``init``
    # then only records entrypoint + cmd, for people reading image.json).
    app: AppConfig | None = None


@dataclass(frozen=True)
class BuiltImage:
    name: str
    path: Path  # <image_dir>/<name>; the tree is path / "rootfs"
    size_bytes: int
    checksum: str  # "sha256:<hex>" over the rootfs tree, see tree_checksum()
    config: ImageConfig = field(default_factory=ImageConfig)

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


def tree_checksum(root: Path) -> tuple[str, int]:
    """(sha256 over a deterministic walk of ``root``, total size of its files and links).

    Each entry contributes its relative path, mode, owner, and its link target or the sha256
    of its contents, in sorted path order: two trees with the same checksum are the same image.
    """
    digest = hashlib.sha256()
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk recurses in this order
        dir_links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        entries = [dirpath, *(os.path.join(dirpath, n) for n in sorted(filenames + dir_links))]
        for path in entries:
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
                size += st.st_size
            elif stat.S_ISREG(st.st_mode):
                content = _file_sha256(path)
                size += st.st_size
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
            else:
                content = ""
            digest.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0{content}\n".encode())
    return f"sha256:{digest.hexdigest()}", size


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_config(image_path: Path) -> ImageConfig | None:
    """Boot config of the image at ``image_path``; None if it has no image.json."""
    try:
        data = json.loads((image_path / META).read_text())["config"]
    except (OSError, ValueError, KeyError):
        return None
    data["init"] = tuple(data["init"])
    if data.get("app") is not None:
        data["app"] = AppConfig.from_dict(data["app"])
    return ImageConfig(**data)


def load_image(image_path: Path) -> BuiltImage | None:
    try:
        data = json.loads((image_path / META).read_text())
    except (OSError, ValueError):
        return None
    config = load_config(image_path) or ImageConfig()
    return BuiltImage(name=data["name"], path=image_path, size_bytes=data["size_bytes"],
                      checksum=data["checksum"], config=config)


def build_cached(image_dir: Path, name: str, config: ImageConfig, progress: Progress,
                 populate: Callable[[Path], None], *, force: bool = False) -> BuiltImage:
    """Return the image ``name`` if already built, else build it with ``populate(rootfs)``."""
    final = image_dir / name
    if not force and (cached := load_image(final)) is not None:
        progress(f"{name}: already built ({cached.size_bytes // 1024} KiB, {cached.checksum})")
        return cached
    if final.exists() and not set(os.listdir(final)) <= {"rootfs", META}:
        # never replace a directory some other builder (e.g. a VM image) put there
        raise FileExistsError(f"{final} exists and is not a container image")
    image_dir.mkdir(parents=True, exist_ok=True)
    tmp = image_dir / f".{name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "rootfs").mkdir(parents=True)
        os.chmod(tmp, 0o755)  # other users (e.g. QEMU's) may need to traverse the store
        os.chmod(tmp / "rootfs", 0o755)
        populate(tmp / "rootfs")
        progress(f"{name}: computing checksum")
        checksum, size = tree_checksum(tmp / "rootfs")
        meta = {"name": name, "size_bytes": size, "checksum": checksum, "config": asdict(config)}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"{name}: built, {size // 1024} KiB, {checksum}")
    return BuiltImage(name=name, path=final, size_bytes=size, checksum=checksum, config=config)
