"""Fixtures for the container driver and image tests: a throwaway Berth host per session.

The host gets its own name (so its own cgroup parent), bridge, /24, uid range and state dir
under /tmp; the session finalizer sweeps every trace of it (processes, mounts, veths, bridge,
cgroups, files) even when tests failed midway, and fails loudly if something survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from workers.drivers.base import HostConfig, ImageSpec, InstanceSpec, NetworkSpec
from workers.drivers.container import ContainerDriver, firewall, network
from workers.drivers.container.cgroups import CgroupLayout
from workers.drivers.container.console import ShimConsole
from workers.drivers.container.state import ContainerPaths, root_uid, veth_name
from workers.drivers.container.syscalls import MNT_DETACH, umount
from workers.images.base import BuiltImage
from workers.images.busybox import build_busybox
from workers.images.debian import build_debian

REPO = Path(__file__).resolve().parents[2]
SHIM_DIR = REPO / "workers" / "shim"
SHIM = REPO / "var" / "bin" / "berth-shim"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


@pytest.fixture(scope="session")
def shim_binary() -> Path:
    """The shim, built as bootstrap.sh does when missing or older than its sources."""
    sources = sorted(SHIM_DIR.glob("*.[ch]"))
    if not SHIM.exists() or SHIM.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        SHIM.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(SHIM),
                        *[str(p) for p in sources if p.suffix == ".c"]], check=True, cwd=REPO)
    return SHIM


@pytest.fixture(scope="session")
def ct_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))  # short: socket paths <= 107 bytes
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_image(ct_root: Path) -> BuiltImage:
    return build_busybox(ct_root / "images", lambda _msg: None)


def make_host(root: Path, image_dir: Path) -> HostConfig:
    suffix = secrets.token_hex(3)
    net = f"10.250.{secrets.randbelow(250) + 1}"
    return HostConfig(
        name=f"t{suffix}", state_dir=root / f"host-{suffix}", image_dir=image_dir,
        bridge=f"btc{suffix}", gateway=f"{net}.1", prefixlen=24,
        uid_base=200_000_000 + secrets.randbelow(500) * 65536 * 64, uid_slots=64,
    )


@pytest.fixture(scope="session")
def debian_image() -> BuiltImage:
    """debian-12, built once (~30 s, from the apt mirror) into a cache kept between runs."""
    cache = Path(os.environ.get("BERTH_TEST_IMAGE_CACHE", "/var/tmp/berth-ct-images"))
    return build_debian(cache, lambda _msg: None)


@pytest.fixture(scope="session")
def ct_host(ct_root: Path, busybox_image: BuiltImage) -> HostConfig:
    return make_host(ct_root, busybox_image.path.parent)


@pytest.fixture(scope="session")
def ct_driver(ct_host: HostConfig, shim_binary: Path) -> Iterator[ContainerDriver]:
    driver = ContainerDriver(ct_host, shim_path=shim_binary)
    driver.prepare_host()
    yield driver
    sweep(driver)
    left = host_leftovers(driver)
    assert not left, f"the test host left traces behind: {left}"


def sweep(driver: ContainerDriver) -> None:
    """Remove everything of ``driver``'s host, whatever state a failed test left it in."""
    host = driver.host
    for status in driver.list_instances():
        with contextlib.suppress(Exception):
            driver.destroy(_spec_stub(status.uuid))
    for pid in _host_processes(driver):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for mount in _mounts_under(host.state_dir):
        with contextlib.suppress(OSError):
            umount(mount, MNT_DETACH)
    for port in network.bridge_ports(host.bridge):
        with contextlib.suppress(Exception):
            network.delete_link(port)
    shutil.rmtree(host.state_dir / "containers", ignore_errors=True)
    with contextlib.suppress(Exception):
        driver.teardown_host()
    shutil.rmtree(host.state_dir, ignore_errors=True)


def host_leftovers(driver: ContainerDriver) -> dict[str, list[str]]:
    """Every trace of the host on the machine (all empty once swept)."""
    host = driver.host
    found = {
        "processes": [str(p) for p in _host_processes(driver)],
        "mounts": _mounts_under(host.state_dir),
        "links": [n for n in os.listdir("/sys/class/net") if n == host.bridge]
        + network.bridge_ports(host.bridge),
        "cgroups": [str(b / host.cgroup_name) for b in driver.layout.bases.values()
                    if (b / host.cgroup_name).exists()],
        "files": [str(host.state_dir)] if host.state_dir.exists() else [],
        "firewall": [firewall.table_name(host)] if firewall.port_chains(host) or _nft_table(host) else [],
        "loop devices": [d for d in _loop_backing_files() if str(host.state_dir) in d],
    }
    return {k: v for k, v in found.items() if v}


def _nft_table(host: HostConfig) -> bool:
    return any(subprocess.run(["nft", "list", "table", family, firewall.table_name(host)],
                              capture_output=True).returncode == 0 for family in ("bridge", "inet"))


def container_leftovers(driver: ContainerDriver, uuid: str) -> dict[str, list[str]]:
    """Every trace of one container (all empty after destroy)."""
    paths = ContainerPaths.of(driver.host, uuid)
    cgroup = driver.layout.group(f"{driver.host.cgroup_name}/{uuid}")
    found = {
        "processes": [str(p) for p in _processes_mentioning(str(paths.dir))]
        + [str(p) for p in (cgroup.procs() if cgroup.exists() else [])],
        "mounts": _mounts_under(paths.dir),
        "links": [veth_name(uuid)] if network.link_exists(veth_name(uuid)) else [],
        "cgroups": list(cgroup.paths().values()) if cgroup.exists() else [],
        "files": [str(paths.dir)] if paths.dir.exists() else [],
        "netns": [f for f in _listdir("/run/netns") if uuid[:12] in f],
        "firewall": [c for c in firewall.port_chains(driver.host) if uuid[:12] in c],
        "loop devices": [d for d in _loop_backing_files() if str(paths.dir) in d],
    }
    return {k: v for k, v in found.items() if v}


def _loop_backing_files() -> list[str]:
    files = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            files.append(backing.read_text().strip())
    return files


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return [m for m in (line.split()[4] for line in f) if m == prefix or m.startswith(prefix + "/")]


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (shims carry their state paths)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


def _host_processes(driver: ContainerDriver) -> list[int]:
    pids = set(_processes_mentioning(str(driver.host.state_dir)))
    layout: CgroupLayout = driver.layout
    for base in layout.bases.values():
        parent = base / driver.host.cgroup_name
        if parent.is_dir():
            for procs in parent.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _spec_stub(uuid: str) -> InstanceSpec:
    return InstanceSpec(uuid=uuid, kind="container", hostname="x", vcpus=1, memory_mib=64,
                        disk_gib=1, image=ImageSpec(name="", path=""),
                        network=NetworkSpec("0.0.0.0", 24, "0.0.0.0", "02:00:00:00:00:00", ""))


@pytest.fixture(scope="session")
def make_spec(ct_host: HostConfig) -> Callable[..., InstanceSpec]:
    """Specs with a fresh uuid, address, MAC and uid slot each."""
    counter = itertools.count(10)

    def make(**overrides: object) -> InstanceSpec:
        n = next(counter)
        uuid = secrets.token_hex(16)
        fields: dict[str, object] = dict(
            uuid=uuid, kind="container", hostname=f"ct{n}", vcpus=1, memory_mib=128, disk_gib=1,
            image=ImageSpec(name="busybox", path="busybox"),
            network=NetworkSpec(address=f"{ct_host.gateway.rsplit('.', 1)[0]}.{n}",
                                prefixlen=ct_host.prefixlen, gateway=ct_host.gateway,
                                mac=f"02:be:{n >> 8:02x}:{n & 255:02x}:{uuid[0:2]}:{uuid[2:4]}",
                                bridge=ct_host.bridge),
            uid_slot=n % ct_host.uid_slots, pids_max=128,
        )
        fields.update(overrides)
        return InstanceSpec(**fields)  # type: ignore[arg-type]

    return make


@pytest.fixture
def container(ct_driver: ContainerDriver, make_spec: Callable[..., InstanceSpec]) -> Iterator[InstanceSpec]:
    """A running busybox container, destroyed after the test."""
    spec = make_spec()
    ct_driver.create(spec)
    yield spec
    ct_driver.destroy(spec)


class Console:
    """Test-side console: type commands, wait for text, collect output with its offsets."""

    def __init__(self, session: ShimConsole) -> None:
        self.session = session
        self.raw = bytearray()  # everything received, as sent by the shim
        self.offsets: list[tuple[int, int]] = []  # (offset, length) of each chunk
        self.ended = False
        self._marks = itertools.count()

    @classmethod
    async def attach(cls, driver: ContainerDriver, uuid: str, from_offset: int = 0, *,
                     wide: bool = True) -> Console:
        """``wide``: make the terminal 1000 columns so typed commands never wrap."""
        console = cls(await driver.open_console(uuid, from_offset=from_offset))
        if wide:
            await console.session.resize(24, 1000)
        return console

    @property
    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.raw)).decode(errors="replace")

    async def expect(self, pattern: str, timeout: float = 5.0) -> str:
        """Wait until ``pattern`` (a regex) appears in the output; return the output so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not re.search(pattern, self.text):
            left = deadline - loop.time()
            if left <= 0 or self.ended:
                raise AssertionError(f"{pattern!r} not seen on the console; tail: {self.text[-500:]!r}")
            try:
                chunk = await asyncio.wait_for(self.session.read(), left)
            except TimeoutError:
                continue
            if chunk is None:
                self.ended = True
                continue
            self.offsets.append((chunk[0], len(chunk[1])))
            self.raw += chunk[1]
        return self.text

    async def run(self, command: str, timeout: float = 10.0) -> str:
        """Run a shell command on the console; return its output (without the echo)."""
        n = next(self._marks)
        start = len(self.text)
        # The marker is printed by printf, so the echoed command line does not contain it.
        # Typed-ahead input is echoed twice (by the tty, then by the shell's line editor), so
        # the output starts after the last echo of the command.
        tail = f"printf '@@%s@@\\n' {n}"
        await self.session.write(f"{command}; {tail}\n".encode())
        await self.expect(f"@@{n}@@\n", timeout)
        out = self.text[start:]
        out = out[out.index("\n", out.rindex(tail)) + 1:]
        return out[:out.rindex(f"@@{n}@@")]

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def attach(ct_driver: ContainerDriver) -> AsyncIterator[Callable[..., Awaitable[Console]]]:
    """``await attach(uuid, from_offset=0, wide=True)`` -> Console (closed after the test)."""
    opened: list[Console] = []

    async def _attach(uuid: str, from_offset: int = 0, *, wide: bool = True) -> Console:
        console = await Console.attach(ct_driver, uuid, from_offset, wide=wide)
        opened.append(console)
        return console

    yield _attach
    for console in opened:
        with contextlib.suppress(Exception):
            await console.close()


@pytest.fixture
def leftovers(ct_driver: ContainerDriver) -> Callable[[str], dict[str, list[str]]]:
    return lambda uuid: container_leftovers(ct_driver, uuid)


def copy_in(driver: ContainerDriver, spec: InstanceSpec, source: Path, dest: str) -> None:
    """Copy a host file into a running container, executable, created with its root's uid
    (host root's uid 0 is not mapped in the container, so its overlay refuses files owned by
    it)."""
    pid, uid = driver.status(spec.uuid).pid, root_uid(driver.host, spec.uid_slot)
    data = source.read_bytes()
    child = os.fork()
    if child == 0:  # pragma: no cover
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.setfsgid(uid)
            libc.setfsuid(uid)  # keeps CAP_SYS_PTRACE, needed for /proc/<pid>/root
            target = Path(f"/proc/{pid}/root/{dest}")
            target.write_bytes(data)
            target.chmod(0o755)
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


@pytest.fixture(scope="session")
def static_program(tmp_path_factory) -> Callable[[str, str], Path]:
    """``static_program(name, c_source)``: a static binary built from C (busybox images have
    no compiler and no libc to link against)."""
    def build(name: str, source: str) -> Path:
        src = tmp_path_factory.mktemp(name) / f"{name}.c"
        src.write_text(source)
        subprocess.run(["cc", "-static", "-O2", "-o", str(src.with_suffix("")), str(src),
                        "-lpthread"], check=True)
        return src.with_suffix("")
    return build


@pytest.fixture
def debian(ct_driver, make_spec, debian_image):
    """A running container of the debian-12 image (a real init and a login shell)."""
    spec = make_spec(image=ImageSpec(name="debian-12", path=str(debian_image.path)),
                     memory_mib=256, disk_gib=2)
    ct_driver.create(spec)
    yield spec
    ct_driver.destroy(spec)
