"""Fixtures and helpers for the VM driver tests (imported by the test_vm_*.py modules).

Real-boot tests share one tiny image in /var/tmp/berth-test/images (QEMU, running as
libvirt-qemu, cannot reach pytest's 0700 tmp dirs) and one cached KVM-or-TCG verdict; each
test gets its own throwaway Berth host (name, state dir, bridge), torn down completely.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.drivers.base import HostConfig, ImageSpec, InstanceSpec, NetworkSpec
from workers.drivers.vm.capabilities import Virtualization, detect_virtualization
from workers.drivers.vm.console import LibvirtConsoleSession
from workers.drivers.vm.daemons import ensure_daemons
from workers.drivers.vm.driver import VmDriver
from workers.drivers.vm.image import VmImage
from workers.images.base import BuiltImage
from workers.images.vm_debian import build_vm_debian
from workers.images.vm_tiny import build_vm_tiny

TEST_ROOT = Path("/var/tmp/berth-test")
IMAGE_DIR = TEST_ROOT / "images"
GATEWAY = "10.253.7.1"


def _mkdir_searchable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def libvirt_daemons() -> None:
    ensure_daemons()


@pytest.fixture(scope="session")
def vm_tiny_image(libvirt_daemons: None) -> BuiltImage:
    _mkdir_searchable(TEST_ROOT)
    _mkdir_searchable(IMAGE_DIR)
    return build_vm_tiny(IMAGE_DIR, lambda _msg: None)


@pytest.fixture(scope="session")
def vm_debian_image(vm_tiny_image: BuiltImage) -> BuiltImage:
    """debootstrap + mkfs.ext4 -d: about a minute the first time, cached afterwards."""
    return build_vm_debian(IMAGE_DIR, lambda _msg: None)


@pytest.fixture(scope="session")
def virtualization(vm_tiny_image: BuiltImage) -> Virtualization:
    """The real check, cached across runs in TEST_ROOT (re-run when the host changes)."""
    return detect_virtualization("qemu:///system", VmImage.load(vm_tiny_image.path),
                                 TEST_ROOT / "virtualization.json",
                                 probe_name="berth-test-kvm-probe")


@pytest.fixture
def vm_bridge() -> Iterator[str]:
    name = f"bt{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def vm_host(vm_bridge: str, vm_tiny_image: BuiltImage) -> Iterator[HostConfig]:
    name = f"t{secrets.token_hex(3)}"
    state = _mkdir_searchable(TEST_ROOT / f"state-{name}")
    yield HostConfig(name=name, state_dir=state, image_dir=IMAGE_DIR, bridge=vm_bridge,
                     gateway=GATEWAY, prefixlen=24)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def vm_driver(vm_host: HostConfig, virtualization: Virtualization) -> Iterator[VmDriver]:
    driver = VmDriver(vm_host, virtualization=virtualization)
    yield driver
    for status in driver.list_instances():  # a failed test must not leave a guest behind
        driver._remove(status.uuid, _files(vm_host, status.uuid))
    driver.close()


def _files(host: HostConfig, uuid: str):  # noqa: ANN202 - test helper
    from workers.drivers.vm.storage import InstanceFiles

    return InstanceFiles.of(host, uuid)


def make_spec(host: HostConfig, *, image: str = "tiny", address: str = "10.253.7.10",
              image_path: str | None = None, **overrides: object) -> InstanceSpec:
    uuid = secrets.token_hex(16)
    fields: dict[str, object] = dict(
        uuid=uuid, kind="vm", hostname=f"vm-{uuid[:6]}", vcpus=1, memory_mib=256, disk_gib=1,
        image=ImageSpec(name=image, path=image_path or image),
        network=NetworkSpec(address=address, prefixlen=24, gateway=host.gateway,
                            mac="52:54:00:" + ":".join(uuid[i:i + 2] for i in (0, 2, 4)),
                            bridge=host.bridge),
    )
    fields.update(overrides)
    return InstanceSpec(**fields)  # type: ignore[arg-type]


async def read_until(session: LibvirtConsoleSession, needle: bytes, timeout: float,
                     seen: bytearray | None = None) -> bytes:
    """Console output up to and including ``needle``; fails the test with the tail if absent."""
    buf = seen if seen is not None else bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while needle not in buf:
        left = deadline - loop.time()
        if left <= 0:
            pytest.fail(f"{needle!r} not seen on the console within {timeout} s; "
                        f"tail: {bytes(buf[-600:])!r}")
        try:
            chunk = await asyncio.wait_for(session.read(), left)
        except TimeoutError:
            continue
        if chunk is None:
            pytest.fail(f"console ended before {needle!r}; tail: {bytes(buf[-600:])!r}")
        buf += chunk[1]
    return bytes(buf)


def hash_password(password: str) -> str:
    """SHA-512 crypt hash, as the panel puts in a spec (password through stdin, not argv)."""
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                          capture_output=True, check=True).stdout.strip()
