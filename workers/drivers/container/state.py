"""Names and on-disk state of one container on a host.

Every host-side object of a container is named from its uuid and the host's config:
``<state_dir>/containers/<uuid>/`` (this module), the cgroup ``<host.cgroup_name>/<uuid>`` and
the host end of its veth pair ``bv<uuid[:12]>``. Processes are recorded as "pid starttime" so
that a recycled pid is never mistaken for the container's shim or init.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig

UUID_RE = re.compile(r"^[0-9a-f]{32}$")
IDS_PER_CONTAINER = 65536
MAX_UID = 2**32 - 1  # (uid_t)-1 is reserved
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL


def check_uuid(uuid: str) -> str:
    if not UUID_RE.match(uuid):
        raise DriverError(f"invalid container uuid {uuid!r} (32 lowercase hex digits expected)")
    return uuid


def veth_name(uuid: str) -> str:
    return f"bv{uuid[:12]}"


def cgroup_relpath(host: HostConfig, uuid: str) -> str:
    return f"{host.cgroup_name}/{uuid}"


def containers_dir(host: HostConfig) -> Path:
    return host.state_dir / "containers"


def root_uid(host: HostConfig, uid_slot: int) -> int:
    """Host uid (and gid) that the container's root maps to."""
    if not 0 <= uid_slot < host.uid_slots:
        raise DriverError(f"uid slot {uid_slot} is outside this host's 0..{host.uid_slots - 1}")
    uid = host.uid_base + uid_slot * IDS_PER_CONTAINER
    if host.uid_base < 65536 or uid + IDS_PER_CONTAINER > MAX_UID:
        raise DriverError(f"uid range {uid}..{uid + IDS_PER_CONTAINER - 1} is not usable "
                          f"(uid_base must leave the host's own ids alone and stay below 2^32)")
    return uid


@dataclass(frozen=True)
class ContainerPaths:
    """Files and directories of one container below the host's state dir."""

    dir: Path

    @classmethod
    def of(cls, host: HostConfig, uuid: str) -> ContainerPaths:
        return cls(containers_dir(host) / check_uuid(uuid))

    @property
    def disk(self) -> Path:  # the writable layer's filesystem (kept while stopped), see rootfs.py
        return self.dir / "disk.img"

    @property
    def rw(self) -> Path:  # where the disk is mounted while the container starts
        return self.dir / "rw"

    @property
    def upper(self) -> Path:  # overlay upper dir, on the disk
        return self.rw / "upper"

    @property
    def work(self) -> Path:  # overlayfs scratch dir, on the disk
        return self.rw / "work"

    @property
    def volumes(self) -> Path:  # application containers' volumes, on the disk beside upper
        return self.rw / "volumes"

    def volume(self, path: str) -> Path:
        """The directory holding the volume mounted at ``path`` in the container ("/data" ->
        volumes/data, "/var/lib/app" -> volumes/var%lib%app: '%' is never in a volume path)."""
        return self.volumes / path.strip("/").replace("/", "%")

    @property
    def merged(self) -> Path:  # overlay mount point, only mounted inside the container
        return self.dir / "merged"

    @property
    def lower(self) -> Path:  # mount point of the idmapped image, inside the container only
        return self.dir / "lower"

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def shim_pid(self) -> Path:
        return self.dir / "shim.pid"

    @property
    def init_pid(self) -> Path:
        return self.dir / "init.pid"

    @property
    def exit_status(self) -> Path:  # wait status of PID 1, written by the shim
        return self.dir / "exit.status"

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def cgroups(self) -> Path:  # cgroup directories as created (see cgroups.from_paths)
        return self.dir / "cgroups.json"

    @property
    def shim_log(self) -> Path:
        return self.dir / "shim.log"

    def runtime_files(self) -> list[Path]:
        """Files that only describe a running container; removed once it has stopped."""
        return [self.console, self.shim_pid, self.init_pid, self.cgroups]


@dataclass(frozen=True)
class ProcRef:
    """A process identified by pid and start time (immune to pid reuse)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start)

    @classmethod
    def load(cls, path: Path) -> ProcRef | None:
        try:
            pid, start = path.read_text().split()
            return cls(int(pid), int(start))
        except (OSError, ValueError):
            return None

    def save(self, path: Path) -> None:
        write_atomic(path, f"{self.pid} {self.start}\n")

    def alive(self) -> bool:
        """True while the process runs (a zombie counts as gone)."""
        return proc_start_time(self.pid) == self.start and proc_state(self.pid) not in ("Z", "X")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe_wait_status(status: int) -> str:
    """What PID 1's wait status means for the container."""
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        # reboot(2) inside a PID namespace ends its init with SIGINT (power off, halt) or
        # SIGHUP (restart); nothing else can deliver those to an init without a handler
        return {signal.SIGINT: "powered off", signal.SIGHUP: "reboot requested from inside"}.get(
            os.WTERMSIG(status), f"killed by signal {os.WTERMSIG(status)}")
    return f"wait status {status}"
