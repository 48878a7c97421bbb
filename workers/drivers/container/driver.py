"""``ContainerDriver``: Berth's namespace containers behind the ``Driver`` protocol.

All methods block (they fork, wait on processes and use pyroute2's synchronous API); from
asyncio code call them through ``asyncio.to_thread``. Only ``open_console`` is async.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import select
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from workers.drivers.base import (
    ConsoleEndpoint,
    DriverError,
    HostConfig,
    InstanceNotFound,
    InstanceSpec,
    InstanceStats,
    InstanceStatus,
    PowerState,
)
from workers.drivers.container import credentials, firewall, network, rootfs
from workers.drivers.container.cgroups import Cgroup, CgroupLayout, Limits, from_paths
from workers.drivers.container.console import ShimConsole, send_input
from workers.drivers.container.reconcile import Orphan, find_orphans, shims_of_host
from workers.drivers.container.spawn import LaunchPlan, launch
from workers.drivers.container.state import (
    MAX_SOCKET_PATH,
    UUID_RE,
    ContainerPaths,
    ProcRef,
    cgroup_relpath,
    check_uuid,
    containers_dir,
    describe_wait_status,
    read_json,
    root_uid,
    veth_name,
    write_atomic,
)
from workers.drivers.container.syscalls import MNT_DETACH, umount
from workers.images.base import META, ImageConfig, load_config

REPO = Path(__file__).resolve().parents[3]
DEFAULT_SHIM = REPO / "var" / "bin" / "berth-shim"
HOSTNAME_RE = re.compile(r"^(?=.{1,64}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", re.I)
SHELL_NUDGE = b"\x15\n"  # ^U clears a half-typed line, Enter makes ash leave its line editor
SHIM_DRAIN = 3.0  # berth-shim gives clients 2 s to take the last output after PID 1 exits
MAX_COMMAND = 256  # arguments (berth-shim's limit, with berth-init's own)
MAX_ENV = 200  # variables, the image's and the order's together (berth-shim takes 256)


class ContainerDriver:
    """Containers of one Berth host (``HostConfig``); never touches another host's objects."""

    kind = "container"

    def __init__(self, host: HostConfig, *, shim_path: Path | None = None,
                 cgroup_base: str | None = None, start_timeout: float = 30.0) -> None:
        """``cgroup_base`` overrides the cgroup below which containers are created (default:
        ``host.cgroup_base``, else the caller's own cgroup in each hierarchy)."""
        self.host = host
        self.shim_path = Path(shim_path) if shim_path else DEFAULT_SHIM
        self.cgroup_base = cgroup_base if cgroup_base is not None else host.cgroup_base
        self.start_timeout = start_timeout
        self._layout: CgroupLayout | None = None

    # -- host ------------------------------------------------------------------------------

    @property
    def layout(self) -> CgroupLayout:
        if self._layout is None:
            self._layout = CgroupLayout.detect(base_override=self.cgroup_base)
        return self._layout

    def prepare_host(self) -> None:
        containers_dir(self.host).mkdir(parents=True, exist_ok=True)
        self.layout.ensure_parent(self.host.cgroup_name)
        network.ensure_bridge(self.host.bridge, self.host.gateway, self.host.prefixlen)
        firewall.ensure_table(self.host)

    def teardown_host(self) -> None:
        """Remove the host-wide pieces ``prepare_host`` made: nftables table, bridge, parent
        cgroups, empty-disk templates, and the state dir if empty (tests, ``make run`` shutdown). Stopped
        containers keep their disks and start again after the next ``prepare_host``.
        Refuses while a container runs."""
        running = [s.uuid for s in self.list_instances() if s.state == PowerState.RUNNING]
        if running:
            raise DriverError(f"host {self.host.name} still runs {len(running)} container(s)")
        firewall.delete_table(self.host)
        network.delete_link(self.host.bridge)
        for child in self.layout.children(self.host.cgroup_name):
            self.layout.remove(f"{self.host.cgroup_name}/{child}")
        self.layout.remove(self.host.cgroup_name)
        shutil.rmtree(rootfs.template_dir(self.host.state_dir), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            containers_dir(self.host).rmdir()

    # -- lifecycle -------------------------------------------------------------------------

    def create(self, spec: InstanceSpec) -> InstanceStatus:
        self._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        created = False
        with self._host_lock():
            if not paths.dir.exists():
                self._check_slot(spec)
                self._make_dirs(spec, paths)
                created = True
        try:
            with self._locked(paths) as present:
                if not present:
                    raise DriverError(f"container {spec.uuid} was destroyed while being created")
                status = self._status(paths, spec.uuid)
                if status.state == PowerState.RUNNING:
                    return status
                return self._start_locked(spec, paths)
        except DriverError:
            if created:
                self._destroy_quietly(spec.uuid)
            raise

    def start(self, spec: InstanceSpec) -> InstanceStatus:
        self._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            status = self._status(paths, spec.uuid)
            if status.state == PowerState.RUNNING:
                return status
            self._check_slot(spec)
            write_atomic(paths.spec, json.dumps(spec.to_dict()))
            return self._start_locked(spec, paths)

    def stop(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus:
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            self._stop_locked(paths, spec.uuid, timeout=timeout)
            return self._status(paths, spec.uuid)

    def reboot(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus:
        self._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            self._stop_locked(paths, spec.uuid, timeout=timeout)
            return self._start_locked(spec, paths)

    def destroy(self, spec: InstanceSpec) -> None:
        """Kill (no grace: the data goes too) and remove every trace. No error when gone."""
        uuid = check_uuid(spec.uuid)
        paths = ContainerPaths.of(self.host, uuid)
        with self._locked(paths) as present:
            if present:
                self._stop_locked(paths, uuid, timeout=0)
            self._teardown_runtime(paths, uuid, thorough=True)
            if present:
                shutil.rmtree(paths.dir)

    def reap(self, uuid: str) -> InstanceStatus:
        """Tidy what a container whose PID 1 ended by itself (exit, poweroff, killed behind
        Berth's back) still holds on the host: firewall rules, veth, cgroups, runtime files.
        Its disk and spec stay: it is a stopped container. Does nothing to a running one, nor
        while an operation holds the container (that operation tidies up itself)."""
        paths = ContainerPaths.of(self.host, uuid)
        with _flock(paths.dir, wait=False) as held:
            if held is None or not paths.dir.exists():  # busy, or gone
                return self._status(paths, uuid)
            status = self._status(paths, uuid)
            if status.state == PowerState.STOPPED:
                self._teardown_runtime(paths, uuid)
            return status

    def change_plan(self, spec: InstanceSpec) -> InstanceStatus:
        """New memory/CPU/pids limits, live on a running container; a bigger disk at next start."""
        self._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            current = paths.disk.stat().st_size if paths.disk.exists() else 0
            if _disk_bytes(spec) < current:
                raise DriverError(f"the disk cannot shrink from {current >> 30} GiB to "
                                  f"{spec.disk_gib} GiB")
            write_atomic(paths.spec, json.dumps(spec.to_dict()))
            status = self._status(paths, spec.uuid)
            if status.state == PowerState.RUNNING:
                self._cgroup(paths, spec.uuid).update(_limits(spec))
            return status

    def rebuild(self, spec: InstanceSpec) -> InstanceStatus:
        """Fresh writable layer from the image; same uuid, address and MAC."""
        self._validate(spec)
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            self._stop_locked(paths, spec.uuid, timeout=0)
            paths.disk.unlink(missing_ok=True)
            self._make_dirs(spec, paths)
            return self._start_locked(spec, paths)

    def upgrade(self, spec: InstanceSpec, *, start: bool = True, timeout: float = 10.0) -> InstanceStatus:
        """Run another application image (a new version, or the one before: a rollback) as
        the same container: same uuid, address, MAC and disk. The writable layer is the
        image's and starts afresh; the volumes (/data and those the image declares) stay.
        ``start``: start it afterwards (else it stays stopped). If the new image does not
        start, the one before is started again and DriverError says so."""
        self._validate(spec)
        if self._image_config(spec).app is None:
            raise DriverError(f"{spec.image.name} is not an application image: an upgrade "
                              "replaces an application's image (a rebuild reinstalls a system image)")
        paths = ContainerPaths.of(self.host, spec.uuid)
        with self._locked(paths) as present:
            if not present:
                raise InstanceNotFound(f"container {spec.uuid} does not exist on {self.host.name}")
            stored = read_json(paths.spec)
            before = InstanceSpec.from_dict(stored) if stored else spec
            if before.image.path == spec.image.path:  # done already (a retried operation)
                write_atomic(paths.spec, json.dumps(spec.to_dict()))
                status = self._status(paths, spec.uuid)
                if start and status.state != PowerState.RUNNING:
                    return self._start_locked(spec, paths)
                return status
            self._stop_locked(paths, spec.uuid, timeout=timeout)
            self._reset_layer(paths)
            write_atomic(paths.spec, json.dumps(spec.to_dict()))
            if not start:
                return self._status(paths, spec.uuid)
            try:
                return self._start_locked(spec, paths)
            except DriverError as exc:
                failure = str(exc)
            # back to the image before, on a fresh layer too: the new one may have written
            self._reset_layer(paths)
            write_atomic(paths.spec, json.dumps(before.to_dict()))
            try:
                self._start_locked(before, paths)
            except DriverError as exc:
                raise DriverError(f"{spec.image.name} did not start ({failure}), and "
                                  f"{before.image.name} did not start again either: {exc}") from None
            raise DriverError(f"{spec.image.name} did not start: {failure}. {before.image.name} "
                              "runs again, with its volumes and a fresh writable layer.")

    # -- queries ---------------------------------------------------------------------------

    def status(self, uuid: str) -> InstanceStatus:
        return self._status(ContainerPaths.of(self.host, uuid), uuid)

    def list_instances(self) -> list[InstanceStatus]:
        return [self.status(uuid) for uuid in self._uuids()]

    def list_orphans(self) -> list[Orphan]:
        """Host objects of this host's containers that no state directory accounts for
        (a crash midway, a directory deleted by hand). Listed for an admin, never deleted;
        ``destroy`` with the orphan's uuid removes them."""
        return find_orphans(self.host, self.layout, set(self._uuids()))

    def stats(self, uuid: str) -> InstanceStats:
        paths = ContainerPaths.of(self.host, uuid)
        if not paths.dir.exists():
            raise InstanceNotFound(f"container {uuid} does not exist on {self.host.name}")
        cpu = memory = 0
        cgroup = self._stored_cgroup(paths)
        if cgroup is not None and cgroup.exists():
            usage = cgroup.stats()
            cpu, memory = usage.cpu_seconds, usage.memory_bytes
        host_rx, host_tx = network.counters(veth_name(uuid))
        return InstanceStats(uuid=uuid, cpu_seconds=cpu, memory_bytes=memory,
                             net_rx_bytes=host_tx,  # what the host sends is what eth0 receives
                             net_tx_bytes=host_rx, disk_used_bytes=rootfs.disk_used(paths.disk))

    def console(self, uuid: str) -> ConsoleEndpoint:
        return ConsoleEndpoint(kind="unix", address=str(ContainerPaths.of(self.host, uuid).console))

    async def open_console(self, uuid: str, *, from_offset: int = 0) -> ShimConsole:
        paths = ContainerPaths.of(self.host, uuid)
        if not paths.dir.exists():
            raise InstanceNotFound(f"container {uuid} does not exist on {self.host.name}")
        return await ShimConsole.connect(paths.console, from_offset)

    # -- internals -------------------------------------------------------------------------

    def _uuids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(containers_dir(self.host))
                          if e.is_dir(follow_symlinks=False) and UUID_RE.match(e.name))
        except FileNotFoundError:
            return []

    def _validate(self, spec: InstanceSpec) -> None:
        check_uuid(spec.uuid)
        if spec.kind != "container":
            raise DriverError(f"the container driver cannot run a {spec.kind!r} instance")
        if not HOSTNAME_RE.match(spec.hostname):
            raise DriverError(f"invalid hostname {spec.hostname!r}")
        root_uid(self.host, spec.uid_slot)
        credentials.check(spec.root_password, spec.ssh_keys)
        self._image_rootfs(spec)
        self._run_config(spec)
        if len(str(ContainerPaths.of(self.host, spec.uuid).console)) > MAX_SOCKET_PATH:
            raise DriverError(f"state dir {self.host.state_dir} is too deep for a UNIX socket path")
        if not self.shim_path.is_file():
            raise DriverError(f"console shim {self.shim_path} is missing: build it with "
                              "scripts/bootstrap.sh (cc -O2 -o var/bin/berth-shim "
                              "workers/shim/*.c)")

    def _image_path(self, spec: InstanceSpec) -> Path:
        path = Path(spec.image.path)
        return path if path.is_absolute() else self.host.image_dir / path

    def _image_rootfs(self, spec: InstanceSpec) -> Path:
        path = self._image_path(spec)
        if (path / META).is_file() and (path / "rootfs").is_dir():
            return path / "rootfs"  # an application image may have neither /bin nor /usr
        for candidate in (path / "rootfs", path):
            if (candidate / "bin").exists() or (candidate / "usr" / "bin").is_dir():
                return candidate
        raise DriverError(f"image {spec.image.name!r} not found: {path} has no rootfs")

    def _image_config(self, spec: InstanceSpec) -> ImageConfig:
        config = load_config(self._image_path(spec))
        if config is not None:
            return config
        if (self._image_rootfs(spec) / "sbin" / "init").exists():
            return ImageConfig()
        return ImageConfig(init=("/bin/sh", "-l"), console_shell=True)

    def _run_config(self, spec: InstanceSpec) -> ImageConfig:
        """The image's config with the order's command and environment applied."""
        config = self._image_config(spec)
        if config.app is None:
            if spec.command or spec.env:
                raise DriverError(f"{spec.image.name} is a system image: only application "
                                  "images (imported from OCI) take a command or environment")
            return config
        argv = config.app.entrypoint + (tuple(spec.command) or config.app.cmd)
        if not argv:
            raise DriverError(f"{spec.image.name} has no command (no Entrypoint or Cmd): "
                              "order it with one")
        env = {**config.env, "HOSTNAME": spec.hostname, **spec.env}
        if len(argv) > MAX_COMMAND or len(env) > MAX_ENV:
            raise DriverError(f"at most {MAX_COMMAND} command arguments and {MAX_ENV} "
                              "environment variables")
        for name in env:
            if not name or "=" in name or "\0" in name:
                raise DriverError(f"invalid environment variable name {name!r}")
        return dataclasses.replace(config, init=argv, env=env)

    def _check_slot(self, spec: InstanceSpec) -> None:
        for uuid in self._uuids():
            if uuid == spec.uuid:
                continue
            other = read_json(ContainerPaths.of(self.host, uuid).spec) or {}
            if other.get("uid_slot") == spec.uid_slot:
                raise DriverError(f"uid slot {spec.uid_slot} is already used by container {uuid}")

    def _make_dirs(self, spec: InstanceSpec, paths: ContainerPaths) -> None:
        paths.dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        for sub in (paths.merged, paths.lower, paths.rw):
            sub.mkdir(mode=0o755, exist_ok=True)
        if not paths.disk.exists():
            rootfs.create_disk(paths.disk, _disk_bytes(spec), rootfs.template_dir(self.host.state_dir))
        write_atomic(paths.spec, json.dumps(spec.to_dict()))

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        """Serializes uid-slot checks and directory creation across processes of this host."""
        root = containers_dir(self.host)
        root.mkdir(parents=True, exist_ok=True)
        with _flock(root):
            yield

    @contextlib.contextmanager
    def _locked(self, paths: ContainerPaths) -> Iterator[bool]:
        """Exclusive lock on one container; yields whether it (still) exists."""
        with _flock(paths.dir) as present:
            yield present and paths.dir.exists()

    def _start_locked(self, spec: InstanceSpec, paths: ContainerPaths) -> InstanceStatus:
        self._teardown_runtime(paths, spec.uuid)
        with contextlib.suppress(FileNotFoundError):
            paths.exit_status.unlink()
        rootfs.grow_disk(paths.disk, _disk_bytes(spec))  # a plan change waiting for this start
        cgroup = self.layout.group(cgroup_relpath(self.host, spec.uuid))
        self.layout.ensure_parent(self.host.cgroup_name)
        write_atomic(paths.cgroups, json.dumps(cgroup.paths()))
        image, uid = self._image_rootfs(spec), root_uid(self.host, spec.uid_slot)
        plan = LaunchPlan(
            uuid=spec.uuid, paths=paths, image_rootfs=image,
            config=self._run_config(spec), hostname=spec.hostname,
            root_uid=uid, cgroup=cgroup, limits=_limits(spec),
            veth=veth_name(spec.uuid), bridge=spec.network.bridge or self.host.bridge,
            network=spec.network, network_group=str(spec.extra.get("network_group", spec.uuid)),
            host=self.host, shim=self.shim_path,
            provision=functools.partial(credentials.apply, image_rootfs=image, root_uid=uid,
                                        root_password=spec.root_password,
                                        ssh_keys=spec.ssh_keys),
        )
        try:
            launched = launch(plan, timeout=self.start_timeout)
        except DriverError:
            # PID 1 may still be alive (exiting after a failed exec, or waiting): kill it
            # first. The start's error is what the caller must see, not a cleanup's.
            with contextlib.suppress(DriverError, OSError):
                self._stop_locked(paths, spec.uuid, timeout=0)
            raise
        return InstanceStatus(uuid=spec.uuid, state=PowerState.RUNNING, pid=launched.init.pid)

    def _stop_locked(self, paths: ContainerPaths, uuid: str, *, timeout: float) -> None:
        init, shim = ProcRef.load(paths.init_pid), ProcRef.load(paths.shim_pid)
        if init is not None and init.alive():
            with _pidfd(init) as pidfd:
                if pidfd is not None and timeout > 0:
                    self._ask_to_stop(paths, pidfd)
                    _wait_fd(pidfd, timeout)
                if pidfd is not None and not _exited(pidfd):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # kills the PID namespace
                    _wait_fd(pidfd, 5.0)
        cgroup = self._stored_cgroup(paths)
        if cgroup is not None and cgroup.exists() and cgroup.procs():
            cgroup.kill()  # a process that escaped the PID namespace's teardown
        if shim is not None and shim.alive():
            with _pidfd(shim) as pidfd:
                if pidfd is not None and not _wait_fd(pidfd, SHIM_DRAIN):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    _wait_fd(pidfd, 5.0)
        self._teardown_runtime(paths, uuid)

    def _ask_to_stop(self, paths: ContainerPaths, pidfd: int) -> None:
        spec = read_json(paths.spec)
        try:
            config = self._image_config(InstanceSpec.from_dict(spec)) if spec else ImageConfig()
        except DriverError:  # the image is gone: the container still stops
            config = ImageConfig()
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, getattr(signal, config.stop_signal, signal.SIGTERM))
        if not config.console_shell:
            return
        # The shell runs its TERM trap only between commands: end the foreground job (every
        # other process gets SIGTERM, as the trap would do) and type an empty line.
        cgroup = self._stored_cgroup(paths)
        init = ProcRef.load(paths.init_pid)
        for pid in cgroup.procs() if cgroup is not None else []:
            if init is None or pid != init.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            send_input(paths.console, SHELL_NUDGE)

    def _teardown_runtime(self, paths: ContainerPaths, uuid: str, *, thorough: bool = False) -> None:
        """Remove what only a running container needs. Idempotent; PID 1 must be dead.

        Runtime files present mean the container ran and was not stopped by us: everything
        is checked. Without them (a clean stop, a new container) only cheap checks run,
        unless ``thorough`` (destroying a container whose directory is gone).
        """
        shim, init = ProcRef.load(paths.shim_pid), ProcRef.load(paths.init_pid)
        if shim is not None and shim.alive() and init is not None and init.alive():
            raise DriverError(f"container {uuid} is running")
        cgroup = self._cgroup(paths, uuid)
        if cgroup.exists():
            cgroup.destroy()  # kills whatever still runs in it (an orphan, when thorough)
        if shim is None and thorough:  # the pid file went with the directory: look around
            shim = next((ProcRef.of(pid) for pid, owner in shims_of_host(self.host)
                         if owner == uuid), None)
        if shim is not None and shim.alive():
            with _pidfd(shim) as pidfd:  # draining the console after PID 1 exited
                if pidfd is not None and not _wait_fd(pidfd, SHIM_DRAIN):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    _wait_fd(pidfd, 5.0)
        if thorough or any(path.exists() for path in paths.runtime_files()):
            # first: the kernel tears the veth down with the netns meanwhile
            firewall.remove_port(self.host, veth_name(uuid))
        if self._link_is_ours(veth_name(uuid), paths):
            network.delete_link(veth_name(uuid))
        if _is_mountpoint(paths.rw):  # left mounted by a start that died midway
            umount(paths.rw, MNT_DETACH)
        for path in paths.runtime_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _link_is_ours(self, link: str, paths: ContainerPaths) -> bool:
        """False for a link of this name on another host's bridge: hosts sharing one machine
        (``HOSTS=3 make run``, the test fleet) name a container's veth after its uuid alone,
        and a container moved to another host has its link there while this one cleans up."""
        try:
            master = os.path.basename(os.readlink(f"/sys/class/net/{link}/master"))
        except OSError:
            return True  # no such link, or on no bridge: whatever is left is ours to remove
        bridges = {self.host.bridge}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            bridges.add(json.loads(paths.spec.read_text())["network"]["bridge"])
        return master in bridges

    def _reset_layer(self, paths: ContainerPaths) -> None:
        if paths.disk.exists():
            rootfs.reset_layer(paths.disk, paths.rw, (paths.upper, paths.work))

    def _destroy_quietly(self, uuid: str) -> None:
        """Cleanup after a failed create: the original error is what the caller must see."""
        paths = ContainerPaths.of(self.host, uuid)
        with self._locked(paths) as present:
            with contextlib.suppress(DriverError, OSError):
                self._teardown_runtime(paths, uuid, thorough=True)
            if present:
                shutil.rmtree(paths.dir, ignore_errors=True)

    def _stored_cgroup(self, paths: ContainerPaths) -> Cgroup | None:
        stored = read_json(paths.cgroups)
        return from_paths(stored) if stored else None

    def _cgroup(self, paths: ContainerPaths, uuid: str) -> Cgroup:
        return self._stored_cgroup(paths) or self.layout.group(cgroup_relpath(self.host, uuid))

    def _status(self, paths: ContainerPaths, uuid: str) -> InstanceStatus:
        check_uuid(uuid)
        if not paths.dir.exists():
            return InstanceStatus(uuid=uuid, state=PowerState.ABSENT)
        init = ProcRef.load(paths.init_pid)
        if init is not None and init.alive():
            shim = ProcRef.load(paths.shim_pid)
            detail = "" if shim is not None and shim.alive() else "console shim is gone"
            return InstanceStatus(uuid=uuid, state=PowerState.RUNNING, pid=init.pid, detail=detail)
        try:
            detail = describe_wait_status(int(paths.exit_status.read_text()))
        except (OSError, ValueError):
            detail = "not running"
        return InstanceStatus(uuid=uuid, state=PowerState.STOPPED, detail=detail)


def _disk_bytes(spec: InstanceSpec) -> int:
    return max(spec.disk_gib, 1) << 30


def _limits(spec: InstanceSpec) -> Limits:
    return Limits(memory_bytes=spec.memory_mib * 1024 * 1024, vcpus=float(spec.vcpus),
                  pids_max=spec.pids_max)


@contextlib.contextmanager
def _flock(path: Path, *, wait: bool = True) -> Iterator[bool | None]:
    """flock() a directory; yields False (unlocked) if it does not exist, None (unlocked) if
    ``wait`` is false and someone else holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _pidfd(proc: ProcRef) -> Iterator[int | None]:
    """A pidfd for ``proc``, or None if it is gone (checked after opening: no pid reuse race)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        yield None
        return
    try:
        yield fd if proc.alive() else None
    finally:
        os.close(fd)


def _wait_fd(fd: int, timeout: float) -> bool:
    """Wait until a pidfd reports its process exited; False on timeout."""
    return bool(select.select([fd], [], [], max(timeout, 0))[0])


def _exited(pidfd: int) -> bool:
    return _wait_fd(pidfd, 0)


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)
