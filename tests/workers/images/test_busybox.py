"""The busybox image builder and the tree checksum every image is registered with."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from workers.images.base import load_config, tree_checksum
from workers.images.busybox import build_busybox


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    messages: list[str] = []
    image = build_busybox(tmp_path_factory.mktemp("images"), messages.append)
    return image, messages


def test_layout(built):
    image, messages = built
    root = image.rootfs
    assert image.path.name == "busybox" and root == image.path / "rootfs"
    assert os.access(root / "bin/busybox", os.X_OK)
    for applet in ("bin/sh", "bin/ls", "sbin/ip", "usr/bin/awk"):
        assert os.readlink(root / applet) == "/bin/busybox"
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert "root:x:0:" in (root / "etc/group").read_text()
    assert (root / "etc/hostname").is_file()
    assert "PS1='\\h:\\w# '" in (root / "etc/profile").read_text()
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((root / "root").stat().st_mode) == 0o700
    for mountpoint in ("proc", "sys", "dev", "run"):
        assert (root / mountpoint).is_dir()
    assert any("applet" in m for m in messages) and messages[-1].startswith("busybox: built")


def test_metadata_and_boot_config(built):
    image, _ = built
    meta = json.loads((image.path / "image.json").read_text())
    assert (meta["name"], meta["checksum"], meta["size_bytes"]) == \
        ("busybox", image.checksum, image.size_bytes)
    assert image.checksum.startswith("sha256:") and image.size_bytes > 1_000_000
    config = load_config(image.path)
    assert config.init == ("/bin/sh", "-l") and config.console_shell


def test_cached_build_returns_at_once(built):
    image, _ = built
    messages: list[str] = []
    mtime = image.rootfs.stat().st_mtime_ns
    started = time.perf_counter()
    again = build_busybox(image.path.parent, messages.append)
    assert time.perf_counter() - started < 0.1
    assert again == image and "already built" in messages[0]
    assert image.rootfs.stat().st_mtime_ns == mtime


def test_checksum_is_deterministic_and_sees_every_change(built, tmp_path: Path):
    image, _ = built
    rebuilt = build_busybox(tmp_path, lambda _m: None)
    assert rebuilt.checksum == image.checksum
    root = rebuilt.rootfs
    changes = [
        lambda: (root / "etc/hostname").write_text("other\n"),
        lambda: os.chmod(root / "etc/profile", 0o600),
        lambda: ((root / "bin/ls").unlink(), (root / "bin/ls").symlink_to("busybox")),
        lambda: (root / "etc/new").touch(),
    ]
    seen = {tree_checksum(root)[0]}
    for change in changes:
        change()
        seen.add(tree_checksum(root)[0])
    assert len(seen) == len(changes) + 1


def test_a_foreign_directory_is_never_replaced(tmp_path: Path):
    (tmp_path / "busybox").mkdir()
    (tmp_path / "busybox" / "disk.qcow2").write_text("a VM image")
    with pytest.raises(FileExistsError):
        build_busybox(tmp_path, lambda _m: None)
    assert (tmp_path / "busybox" / "disk.qcow2").exists()
