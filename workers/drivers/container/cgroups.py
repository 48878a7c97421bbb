"""Control groups for containers: one interface over cgroup v1 and v2 hierarchies.

A host has either controllers on cgroup v1 hierarchies (memory, cpu, cpuacct, pids, freezer
mounted under /sys/fs/cgroup/<controller>, often with a controller-less cgroup2 "unified"
hierarchy beside them for cgroup.kill) or a pure cgroup2 tree. ``CgroupLayout.detect()`` reads
/proc/self/mountinfo and /proc/self/cgroup and returns the layout; ``layout.group(relpath)``
returns the matching backend for a cgroup below the caller's own cgroup in every hierarchy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from workers.drivers.base import DriverError

CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
UNIFIED = "unified"  # key of the controller-less cgroup2 hierarchy in a v1 layout


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # 0 = unlimited
    vcpus: float  # CPU quota in CPUs; 0 = unlimited
    pids_max: int  # 0 = unlimited


@dataclass(frozen=True)
class CgroupStats:
    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    oom_kills: int
    pids_current: int
    pids_limit_hits: int


class Cgroup(Protocol):
    """One container's cgroup, whatever the hierarchy layout."""

    def paths(self) -> dict[str, str]:
        """Directory per hierarchy, stored in the container's state dir (see ``from_paths``)."""

    def create(self, limits: Limits) -> None: ...

    def update(self, limits: Limits) -> None: ...

    def exists(self) -> bool: ...

    def add(self, pid: int) -> None: ...

    def clone_into(self) -> str | None:
        """A cgroup2 directory a new process can be born in (clone3 CLONE_INTO_CGROUP); the
        process joins the other hierarchies' directories itself (berth-shim's PID 1)."""

    def procs(self) -> list[int]: ...

    def kill(self) -> None: ...

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...

    def stats(self) -> CgroupStats: ...

    def destroy(self, timeout: float = 5.0) -> None: ...


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _write(path: Path, value: str | int) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        raise DriverError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def _keyed(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, cpu.stat, pids.events, ...)."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _pids(path: Path) -> list[int]:
    return [int(x) for x in _read(path).split()]


def _rmdir(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY while killed tasks are still being torn down and uncharged
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise DriverError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
            time.sleep(0.005)


def _sigkill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_group(group: Cgroup, kill_file: Path | None, timeout: float = 5.0) -> None:
    """SIGKILL every process of ``group`` and wait until the cgroup is empty."""
    if kill_file is not None and kill_file.exists():
        _write(kill_file, 1)
    else:  # kernels before 5.14: freeze so nothing forks while we kill, then thaw
        group.freeze()
        try:
            _sigkill(group.procs())
        finally:
            group.thaw()
    deadline = time.monotonic() + timeout
    while pids := group.procs():
        if time.monotonic() > deadline:
            raise DriverError(f"processes {pids} survive SIGKILL")
        _sigkill(pids)
        time.sleep(0.002)


@dataclass
class CgroupV1:
    """Controllers on separate v1 hierarchies, plus the controller-less cgroup2 if mounted."""

    dirs: dict[str, Path]

    def paths(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.dirs.items()}

    def create(self, limits: Limits) -> None:
        made: list[Path] = []
        try:
            for path in self.dirs.values():
                path.mkdir()
                made.append(path)
            self.update(limits)
        except (OSError, DriverError) as exc:
            for path in reversed(made):
                _rmdir(path, time.monotonic() + 1)
            if isinstance(exc, DriverError):
                raise
            raise DriverError(f"cannot create cgroup {exc.filename}: {exc.strerror}") from exc

    def update(self, limits: Limits) -> None:
        if mem := self.dirs.get("memory"):
            self._set_memory(mem, limits.memory_bytes)
        if cpu := self.dirs.get("cpu"):
            _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
            quota = int(limits.vcpus * CPU_PERIOD_US) if limits.vcpus > 0 else -1
            _write(cpu / "cpu.cfs_quota_us", quota)
        if pids := self.dirs.get("pids"):
            _write(pids / "pids.max", limits.pids_max if limits.pids_max > 0 else "max")

    @staticmethod
    def _set_memory(mem: Path, limit: int) -> None:
        value = limit if limit > 0 else -1
        memsw = mem / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            _write(mem / "memory.limit_in_bytes", value)
            return
        # memory+swap must stay >= memory: raise memsw first when growing, last when shrinking.
        # Equal limits mean no swap at all, so the OOM killer acts instead of swapping.
        current = int(_read(mem / "memory.limit_in_bytes", "0") or 0)
        growing = value == -1 or value > current
        order = [(memsw, value), (mem / "memory.limit_in_bytes", value)]
        for path, v in order if growing else reversed(order):
            _write(path, v)

    def exists(self) -> bool:
        return any(path.is_dir() for path in self.dirs.values())

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            _write(path / "cgroup.procs", pid)

    def clone_into(self) -> str | None:
        # the hybrid layout's cgroup2 "unified" directory: being born there costs nothing,
        # moving there would wait for an RCU grace period (see launch.c, open_cgroup_tasks)
        unified = self.dirs.get(UNIFIED)
        return str(unified) if unified else None

    def procs(self) -> list[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            found.update(_pids(path / "cgroup.procs"))
        return sorted(found)

    def kill(self) -> None:
        unified = self.dirs.get(UNIFIED)
        _kill_group(self, unified / "cgroup.kill" if unified else None)

    def freeze(self) -> None:
        if (unified := self.dirs.get(UNIFIED)) and (unified / "cgroup.freeze").exists():
            _write(unified / "cgroup.freeze", 1)
        elif freezer := self.dirs.get("freezer"):
            _write(freezer / "freezer.state", "FROZEN")

    def thaw(self) -> None:
        if (unified := self.dirs.get(UNIFIED)) and (unified / "cgroup.freeze").exists():
            _write(unified / "cgroup.freeze", 0)
        elif freezer := self.dirs.get("freezer"):
            _write(freezer / "freezer.state", "THAWED")

    def stats(self) -> CgroupStats:
        mem = self.dirs.get("memory")
        acct = self.dirs.get("cpuacct")
        pids = self.dirs.get("pids")
        oom = _keyed(mem / "memory.oom_control") if mem else {}
        return CgroupStats(
            cpu_seconds=int(_read(acct / "cpuacct.usage", "0")) / 1e9 if acct else 0.0,
            memory_bytes=int(_read(mem / "memory.usage_in_bytes", "0")) if mem else 0,
            memory_peak_bytes=int(_read(mem / "memory.max_usage_in_bytes", "0")) if mem else 0,
            oom_kills=oom.get("oom_kill", 0),
            pids_current=int(_read(pids / "pids.current", "0")) if pids else 0,
            pids_limit_hits=_keyed(pids / "pids.events").get("max", 0) if pids else 0,
        )

    def destroy(self, timeout: float = 5.0) -> None:
        if self.procs():
            self.kill()
        deadline = time.monotonic() + timeout
        for path in self.dirs.values():
            _rmdir(path, deadline)


@dataclass
class CgroupV2:
    """A cgroup in a pure cgroup2 tree (controllers enabled in the parents' subtree_control)."""

    path: Path

    def paths(self) -> dict[str, str]:
        return {"v2": str(self.path)}

    def create(self, limits: Limits) -> None:
        try:
            self.path.mkdir()
        except OSError as exc:
            raise DriverError(f"cannot create cgroup {self.path}: {exc.strerror}") from exc
        try:
            self.update(limits)
        except DriverError:
            _rmdir(self.path, time.monotonic() + 1)
            raise

    def update(self, limits: Limits) -> None:
        p = self.path
        _write(p / "memory.max", limits.memory_bytes if limits.memory_bytes > 0 else "max")
        if (p / "memory.swap.max").exists():
            _write(p / "memory.swap.max", 0)  # no swap: the OOM killer acts at the limit
        quota = int(limits.vcpus * CPU_PERIOD_US) if limits.vcpus > 0 else "max"
        _write(p / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        _write(p / "pids.max", limits.pids_max if limits.pids_max > 0 else "max")

    def exists(self) -> bool:
        return self.path.is_dir()

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", pid)

    def clone_into(self) -> str | None:
        return str(self.path)

    def procs(self) -> list[int]:
        return _pids(self.path / "cgroup.procs")

    def kill(self) -> None:
        _kill_group(self, self.path / "cgroup.kill")

    def freeze(self) -> None:
        _write(self.path / "cgroup.freeze", 1)

    def thaw(self) -> None:
        _write(self.path / "cgroup.freeze", 0)

    def stats(self) -> CgroupStats:
        p = self.path
        return CgroupStats(
            cpu_seconds=_keyed(p / "cpu.stat").get("usage_usec", 0) / 1e6,
            memory_bytes=int(_read(p / "memory.current", "0")),
            memory_peak_bytes=int(_read(p / "memory.peak", "0")),
            oom_kills=_keyed(p / "memory.events").get("oom_kill", 0),
            pids_current=int(_read(p / "pids.current", "0")),
            pids_limit_hits=_keyed(p / "pids.events").get("max", 0),
        )

    def destroy(self, timeout: float = 5.0) -> None:
        if self.procs():
            self.kill()
        _rmdir(self.path, time.monotonic() + timeout)


@dataclass(frozen=True)
class CgroupLayout:
    """Where this process's cgroups are, per hierarchy.

    ``bases`` maps a hierarchy key ("memory", "cpu", ..., "unified" on v1 hosts; "v2" on pure
    cgroup2 hosts) to the directory of the caller's own cgroup in it. Container cgroups are
    created below these bases, so Berth works inside a delegated subtree as well as at the root.
    """

    version: int
    bases: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def detect(cls, mountinfo: str | None = None, proc_cgroup: str | None = None,
               base_override: str | None = None) -> CgroupLayout:
        """Read the layout from /proc (or from the given texts, for tests)."""
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        own_v1: dict[str, str] = {}
        own_v2 = "/"
        for line in proc_cgroup.splitlines():
            hid, ctrls, path = line.split(":", 2)
            if hid == "0" and not ctrls:
                own_v2 = path
            for ctrl in ctrls.split(","):
                if ctrl:
                    own_v1[ctrl] = path
        v1_mounts: dict[str, tuple[Path, str]] = {}
        v2_mounts: list[tuple[Path, str]] = []
        for line in mountinfo.splitlines():
            pre, _, post = line.partition(" - ")
            fields, post_fields = pre.split(), post.split()
            if len(fields) < 5 or len(post_fields) < 3:
                continue
            root, mountpoint, fstype, options = fields[3], fields[4], post_fields[0], post_fields[2]
            if fstype == "cgroup2":
                v2_mounts.append((Path(mountpoint), root))
            elif fstype == "cgroup":
                for opt in options.split(","):
                    if opt in V1_CONTROLLERS and opt not in v1_mounts:
                        v1_mounts[opt] = (Path(mountpoint), root)

        def under(mount: Path, mount_root: str, own: str) -> Path:
            if base_override is not None:
                own = base_override
            rel = os.path.relpath(own, mount_root) if own.startswith(mount_root) else own
            return (mount / rel.lstrip("/")).resolve() if rel != "." else mount

        if "memory" in v1_mounts:
            bases = {c: under(m, r, own_v1.get(c, "/")) for c, (m, r) in v1_mounts.items()}
            if v2_mounts:
                mount, root = v2_mounts[0]
                bases[UNIFIED] = under(mount, root, own_v2)
            return cls(version=1, bases=bases)
        if v2_mounts:
            mount, root = v2_mounts[0]
            return cls(version=2, bases={"v2": under(mount, root, own_v2)})
        raise DriverError("no usable cgroup hierarchy: neither cgroup v1 memory nor cgroup2 is mounted")

    def group(self, relpath: str) -> Cgroup:
        """The cgroup ``relpath`` (e.g. "berth-dev/<uuid>") below our own cgroup."""
        if self.version == 2:
            return CgroupV2(self.bases["v2"] / relpath)
        return CgroupV1({k: base / relpath for k, base in self.bases.items()})

    def ensure_parent(self, relpath: str) -> None:
        """Create the host's parent cgroup; on v2 enable the controllers for its children."""
        for base in self.bases.values():
            try:
                (base / relpath).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DriverError(f"cannot create cgroup {base / relpath}: {exc.strerror}") from exc
        if self.version != 2:
            return
        base = self.bases["v2"]
        available = set(_read(base / "cgroup.controllers").split())
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise DriverError(f"cgroup {base} lacks the {', '.join(missing)} controller(s); "
                              "run Berth in a cgroup with them delegated")
        enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        chain = [base, *[base / p for p in _prefixes(relpath)]]
        for path in chain:
            enabled = set(_read(path / "cgroup.subtree_control").split())
            if all(c in enabled for c in V2_CONTROLLERS):
                continue
            try:
                (path / "cgroup.subtree_control").write_text(enable)
            except OSError as exc:
                hint = (" (processes in this cgroup block it: run the Berth worker in a leaf "
                        "cgroup of a delegated subtree, e.g. systemd Delegate=yes)"
                        if exc.errno == errno.EBUSY else "")
                raise DriverError(f"cannot enable {enable} in {path}: {exc.strerror}{hint}") from exc

    def children(self, relpath: str) -> list[str]:
        """Names of the cgroups directly below ``relpath`` in any hierarchy."""
        names: set[str] = set()
        for base in self.bases.values():
            try:
                names.update(e.name for e in os.scandir(base / relpath) if e.is_dir())
            except OSError:
                continue
        return sorted(names)

    def remove(self, relpath: str) -> None:
        """rmdir ``relpath`` in every hierarchy (must be empty); missing is fine."""
        for base in self.bases.values():
            _rmdir(base / relpath, time.monotonic() + 2)


def _prefixes(relpath: str) -> list[str]:
    """'a/b' -> ['a', 'a/b']: the cgroups whose subtree_control must enable controllers."""
    parts = Path(relpath).parts
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def from_paths(paths: dict[str, str]) -> Cgroup:
    """Rebuild a container's cgroup from the directories stored at creation time.

    Stored, not recomputed: another process of the same host (the agent, a later worker) may
    itself sit in a different cgroup, so its own-cgroup-relative path would point elsewhere.
    """
    if set(paths) == {"v2"}:
        return CgroupV2(Path(paths["v2"]))
    return CgroupV1({k: Path(v) for k, v in paths.items()})
