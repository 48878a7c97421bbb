"""The driver contract shared by the container and VM backends.

Drivers run on a host, as root, inside the host worker (Celery) or the host agent. They never
import Django: everything they need arrives as plain dataclasses built from the task's JSON.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class DriverError(Exception):
    """A driver operation failed; the message is shown to the customer and the admin."""


class InstanceNotFound(DriverError):
    """The host has no trace of the instance (never created, or already destroyed)."""


class PowerState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # defined on the host (rootfs/disk kept) but not running
    ABSENT = "absent"  # nothing on the host


@dataclass(frozen=True)
class HostConfig:
    """Where and how a host keeps its instances. Built by the host worker from its environment."""

    name: str
    state_dir: Path  # per-host: instance dirs, sockets, pid files
    image_dir: Path  # shared, read-only image store (one sub-directory per image)
    bridge: str  # host bridge the instances' NICs are attached to
    gateway: str  # the bridge's address, the instances' default route
    prefixlen: int
    uid_base: int = 1_000_000  # first host uid handed to containers
    uid_slots: int = 1024  # number of 65536-id ranges available from uid_base
    libvirt_uri: str = "qemu:///system"
    # The cgroup (a path below the cgroup mount, e.g. "/berth") under which containers' cgroups
    # go; None: the caller's own cgroup. Under systemd (deploy/) the worker and the agent are two
    # units, each in a cgroup of its own, and a unit's cgroup may not hand controllers to
    # children while it holds processes (cgroup v2): both name one cgroup outside their units.
    cgroup_base: str | None = None

    @property
    def cgroup_name(self) -> str:
        """Name of this host's parent cgroup (one per Berth host, so several can share a kernel)."""
        return f"berth-{self.name}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostConfig:
        data = dict(data)
        data["state_dir"] = Path(data["state_dir"])
        data["image_dir"] = Path(data["image_dir"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["image_dir"] = str(self.image_dir)
        return data


@dataclass(frozen=True)
class NetworkSpec:
    address: str  # e.g. "10.77.0.5", allocated by the panel
    prefixlen: int
    gateway: str
    mac: str  # allocated by the panel, stable for the instance's life
    bridge: str


@dataclass(frozen=True)
class ImageSpec:
    name: str  # e.g. "busybox", "debian-12", "tiny"
    path: str  # directory in the image store (container rootfs, or VM image files)
    checksum: str = ""


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a host needs to build and run one instance. Sent as JSON in each task."""

    uuid: str  # 32 hex chars; names every host-side object of the instance
    kind: str  # "container" | "vm"
    hostname: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    image: ImageSpec
    network: NetworkSpec
    uid_slot: int = 0  # containers: index of the instance's 65536-id range on the host
    pids_max: int = 512
    root_password: str = ""  # a crypt(3) hash ("$6$…"), never the password itself
    ssh_keys: tuple[str, ...] = ()
    # Application containers (OCI images) only: ``command`` replaces the image's Cmd (its
    # Entrypoint stays, as with ``docker run IMAGE COMMAND``); ``env`` is added to its Env.
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.uuid[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceSpec:
        data = dict(data)
        data["image"] = ImageSpec(**data["image"])
        data["network"] = NetworkSpec(**data["network"])
        data["ssh_keys"] = tuple(data.get("ssh_keys", ()))
        data["command"] = tuple(data.get("command") or ())
        data["env"] = dict(data.get("env") or {})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InstanceStatus:
    uuid: str
    state: PowerState
    pid: int | None = None  # container init / qemu pid on the host
    detail: str = ""


@dataclass(frozen=True)
class InstanceStats:
    """Cumulative counters, sampled by the host agent for usage metering."""

    uuid: str
    cpu_seconds: float
    memory_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    disk_used_bytes: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of an instance's disk as its host keeps it (``drivers/<kind>/snapshots.py``)."""

    name: str
    size_bytes: int  # what it takes on the host's disk
    with_memory: bool = False  # a VM taken while running: its memory too (a restore resumes it)
    created_at: float = 0.0  # Unix time


class DiskStore(Protocol):
    """Snapshots of one kind's instances, and the consistent copies of a disk that backups and
    moves between hosts archive (``workers/backups.py``). Every method is safe to retry."""

    def take(self, spec: InstanceSpec, name: str) -> SnapshotInfo: ...

    def restore(self, spec: InstanceSpec, name: str) -> InstanceStatus: ...

    def delete(self, spec: InstanceSpec, name: str) -> None: ...

    def list(self, uuid: str) -> list[SnapshotInfo]: ...

    def export_disk(self, spec: InstanceSpec, dest_dir: Path) -> Path:
        """A consistent copy of the instance's current disk in ``dest_dir`` (running or not)."""

    def install_disk(self, spec: InstanceSpec, disk: Path, *, start: bool) -> InstanceStatus:
        """Make ``disk`` (from ``export_disk``, maybe on another host) the instance's disk: the
        instance is created around it when the host does not have it, else its disk is
        replaced (stopped first). Started afterwards when ``start``."""


@dataclass(frozen=True)
class ConsoleEndpoint:
    """How the host agent reaches an instance's console.

    ``unix``: a stream socket served by the container's shim (see workers/shim).
    ``libvirt``: the domain's serial console through virDomainOpenConsole.
    """

    kind: str  # "unix" | "libvirt"
    address: str  # socket path, or libvirt domain name


class ConsoleSession(Protocol):
    """An attached console, used by the host agent's relay (asyncio).

    Output is numbered by byte offset since the instance started, so a relay that reattaches
    (after its own restart) resumes exactly where it stopped: no gap, no duplicate.
    """

    async def read(self) -> tuple[int, bytes] | None:
        """Next chunk of output as (offset of its first byte, data); None once the console ended."""

    async def write(self, data: bytes) -> None: ...

    async def resize(self, rows: int, cols: int) -> None: ...

    async def close(self) -> None: ...


class Driver(Protocol):
    """One backend per instance kind. Every method is idempotent and safe to retry."""

    kind: str

    def prepare_host(self) -> None:
        """Make sure host-wide pieces exist (bridge, cgroup parent, daemons). Idempotent."""

    def create(self, spec: InstanceSpec) -> InstanceStatus:
        """Build the instance from its image and start it. Re-running after a crash converges."""

    def start(self, spec: InstanceSpec) -> InstanceStatus: ...

    def stop(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus:
        """Graceful stop, forced after ``timeout`` seconds."""

    def reboot(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus: ...

    def destroy(self, spec: InstanceSpec) -> None:
        """Remove every trace of the instance from the host. No error when already gone."""

    def change_plan(self, spec: InstanceSpec) -> InstanceStatus:
        """Apply the spec's new vcpus/memory/disk: live where possible, else at next start."""

    def rebuild(self, spec: InstanceSpec) -> InstanceStatus:
        """Fresh writable layer / disk from the image; same identity and address."""

    def status(self, uuid: str) -> InstanceStatus: ...

    def list_instances(self) -> list[InstanceStatus]:
        """Every instance of this host (and only this host) that exists on the machine."""

    def stats(self, uuid: str) -> InstanceStats: ...

    def console(self, uuid: str) -> ConsoleEndpoint: ...

    async def open_console(self, uuid: str, *, from_offset: int = 0) -> ConsoleSession:
        """Attach to the console; replay retained output from ``from_offset`` first."""
