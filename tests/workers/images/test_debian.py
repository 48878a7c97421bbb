"""The debian-12 container image (built once per machine into the test image cache)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from workers.images.base import load_config
from workers.images.debian import DISABLED_SCRIPTS, build_debian, find_mirror


def test_mirror_comes_from_the_hosts_apt_sources(tmp_path: Path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n"
                      "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert find_mirror((deb822, one_line)) == "http://mirror.example/debian"
    assert find_mirror((tmp_path / "missing", one_line)) == "http://old.example/debian"
    assert find_mirror((tmp_path / "missing",)) == "http://deb.debian.org/debian"


@pytest.mark.root
def test_debian_image_layout_and_cache(debian_image):
    root = debian_image.rootfs
    assert (root / "sbin/init").exists() and (root / "sbin/agetty").exists()
    assert (root / "etc/debian_version").read_text().startswith("12.")
    inittab = (root / "etc/inittab").read_text()
    assert "p0::powerfail:/sbin/init 0" in inittab and "--autologin root console" in inittab
    boot_scripts = " ".join(p.name for p in (root / "etc/rcS.d").iterdir())
    assert not any(script in boot_scripts for script in DISABLED_SCRIPTS)
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    config = load_config(debian_image.path)
    assert (config.init, config.stop_signal, config.console_shell) == (("/sbin/init",), "SIGPWR", False)
    assert 50 << 20 < debian_image.size_bytes < 400 << 20
    messages: list[str] = []
    started = time.perf_counter()
    assert build_debian(debian_image.path.parent, messages.append) == debian_image
    assert time.perf_counter() - started < 0.5 and "already built" in messages[0]
