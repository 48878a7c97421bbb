"""Starting a container so that it outlives the process that asked for it.

The namespace sequence runs in ``berth-shim launch`` (workers/shim/launch.c), started with
posix_spawn: the caller (a Celery prefork child, a test) is a large Python process, and every
fork of it would pay for copying its page tables and, in the child, a copy-on-write fault for
each object touched. The shim forks once (its parent exits at once, so the container is
nobody's child), clones PID 1 into new namespaces and later serves the console; PID 1 builds
the container's root and console and execs the image's init.

The caller meanwhile does the host-side work, in threads where it can overlap: the disk (a
loop device and a mount, which wait for RCU grace periods: started first), cgroups, the
firewall rules and the veth. On a loaded host every hand-over between processes costs a
wake-up (milliseconds), so the go-aheads are sent as soon as their conditions hold, not in
answer to a report. PID 1 does not wait for the disk to be cloned: the disk is mounted
detached (fsmount, never in the host's mount table), prepared through /proc/self/fd, and its
descriptor handed over. The protocol and the sequence diagram are in launch.c; in short:

    caller: disk, rules (threads), cgroups, spawn           shim: clone PID 1 (which joins its
                                                                    cgroups), maps, image fd
            <- "pid1 <pid>": veth, pid files, "N"
            disk ready (thread): "W" + its fd                 shim: both fds to PID 1; once
                                                                    "N" is in, "X" (queued)
                                                              PID 1: mounts, pivot_root, pty,
            <- "root"                                                reads "X": caps, seccomp,
            <- "ready" (PID 1 exec'd, console served)                exec init

PID 1 is born in its cgroup2 cgroup (CLONE_INTO_CGROUP: the "unified" one on hybrid cgroup-v1
hosts) and joins its cgroup-v1 cgroups itself, first thing, by writing "0" to their ``tasks``
files (opened by the shim as host root). Moving a pid through ``cgroup.procs`` instead would
take the kernel's cgroup_threadgroup_rwsem for writing, whose first writer after a quiet moment
waits for an RCU grace period (7-13 ms on these machines; LXC pays it at every start).

If the caller dies midway, the shim reads EOF where it waits for a go-ahead and gives up; if the
shim dies, PID 1 reads EOF on its socket and gives up too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig, NetworkSpec
from workers.drivers.container import firewall, network, rootfs
from workers.drivers.container.cgroups import Cgroup, Limits
from workers.drivers.container.security import capability_mask, seccomp_program
from workers.drivers.container.state import ContainerPaths, ProcRef
from workers.images.base import ImageConfig

PID1_ENV_FILE = "/run/berth/pid1.sh"
# Sourced through $ENV by the console shell when it is PID 1: without a handler the kernel
# drops SIGTERM sent to a namespace's init, so stop() could only kill it. The trap ends the
# other processes gracefully (up to 5 s), then exits, which stops the container.
PID1_ENV_SCRIPT = """\
# Written by Berth: the console shell is this container's PID 1.
unset ENV
if [ "$$" = 1 ]; then
  trap 'kill -TERM -1 2>/dev/null; n=0
        while [ $n -lt 50 ] && kill -0 -1 2>/dev/null; do sleep 0.1; n=$((n+1)); done
        exit 0' TERM
fi
"""
_HIGH_FD = 10  # the shim's descriptors are first copied above this, so dup2 onto 2-5 never clobbers


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a start needs."""

    uuid: str
    paths: ContainerPaths
    image_rootfs: Path
    config: ImageConfig
    hostname: str
    root_uid: int  # host uid/gid of the container's root
    cgroup: Cgroup
    limits: Limits
    veth: str
    bridge: str
    network: NetworkSpec
    network_group: str  # containers reach each other on the bridge only within a group
    host: HostConfig
    shim: Path
    # writes the spec's credentials into a new writable layer (its upper dir) before its
    # first boot: after create and rebuild, never over what the customer changed since
    provision: Callable[[Path], None] | None = None
    winsize: tuple[int, int] = (24, 80)

    def init_env(self) -> dict[str, str]:
        env = {"container": "berth", **self.config.env}
        if self.config.console_shell:
            env["ENV"] = PID1_ENV_FILE
        return env

    def volumes(self) -> list[tuple[Path, str]]:
        """(directory on the disk, path in the container) of an application's volumes."""
        app = self.config.app
        return [(self.paths.volume(path), path) for path in app.volumes] if app else []

    def shim_config(self) -> bytes:
        """The "key=value\\0" entries ``berth-shim launch`` reads on fd 3."""
        entries = [
            ("name", self.uuid), ("rootfs", str(self.image_rootfs)), ("base", str(self.paths.dir)),
            ("hostname", self.hostname), ("uid", str(self.root_uid)),
            ("rows", str(self.winsize[0])), ("cols", str(self.winsize[1])),
            ("shell", "1" if self.config.console_shell else "0"),
            ("exit", str(self.paths.exit_status)), ("socket", str(self.paths.console)),
            ("caps", str(capability_mask())), ("seccomp", seccomp_program().hex()),
        ]
        if self.config.console_shell:
            entries.append(("pid1_script", PID1_ENV_SCRIPT))
        if (app := self.config.app) is not None:
            entries += [("app", "1"), ("user", f"{app.uid}:{app.gid}"),
                        ("groups", ",".join(map(str, app.groups))), ("workdir", app.workdir)]
            entries += [("volume", f"{source.relative_to(self.paths.dir)}:{target}")
                        for source, target in self.volumes()]
        if (target := self.cgroup.clone_into()) is not None:
            entries.append(("cgroup2", target))
        entries += [("arg", arg) for arg in self.config.init]
        entries += [("env", f"{k}={v}") for k, v in self.init_env().items()]
        entries += [("cgroup", d) for d in self.cgroup.paths().values()]
        for key, value in entries:
            if "\0" in value:
                raise DriverError(f"container setup: NUL byte in {key}")
        return b"".join(f"{k}={v}".encode() + b"\0" for k, v in entries)


@dataclass(frozen=True)
class Launched:
    shim: ProcRef
    init: ProcRef


def launch(plan: LaunchPlan, timeout: float = 30.0) -> Launched:
    """Start the container detached from the caller; return once its shim serves the console.

    Raises DriverError on failure, with the host-side pieces possibly still in place: the
    driver's teardown removes them (it has to anyway if this process is killed midway).
    """
    firewall.libnftables()  # loaded once per process
    # go-aheads, and the disk's mount descriptor (SCM_RIGHTS): a stream socket, read() by the shim
    go, go_r = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pool = _helpers()
    tasks: list[Future] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(go_r.close)
        cleanup.callback(go.close)
        cleanup.callback(futures.wait, tasks)  # nothing of this start outlives it
        # first: the loop device and the mount wait longest for the kernel (RCU grace periods);
        # meanwhile the cgroups are made, the shim clones PID 1 and the veth is created
        preparing = pool.submit(_prepare_disk, plan, go)
        tasks.append(preparing)
        # the rules exist before the port does (it is never unguarded): waited for at "pid1"
        guarding = pool.submit(firewall.add_port, plan.host, plan.veth, plan.network,
                               plan.network_group)
        tasks.append(guarding)
        plan.cgroup.create(plan.limits)
        config_r, config_w = os.pipe()
        try:  # written before the shim starts: it reads it at once (well below a pipe's 64 KiB)
            os.write(config_w, plan.shim_config())
        except BaseException:
            os.close(config_r)
            raise
        finally:
            os.close(config_w)
        report_r, report_w = os.pipe()
        cleanup.callback(os.close, report_r)
        log = os.open(plan.paths.shim_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                      0o644)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
                for fd in (log, config_r, report_w, go_r.fileno())]
        try:
            spawned = os.posix_spawn(
                plan.shim, [str(plan.shim), "launch", "-S", str(plan.paths.console), "-n", plan.uuid],
                {}, file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDWR, 0),
                                  (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_RDWR, 0),
                                  *[(os.POSIX_SPAWN_DUP2, fd, 2 + i) for i, fd in enumerate(high)]])
        except OSError as exc:
            raise DriverError(f"cannot run the console shim {plan.shim}: {exc.strerror}") from exc
        finally:
            for fd in (*high, log, config_r, report_w):
                os.close(fd)
            go_r.close()  # the shim's: it reads EOF if this process dies
        cleanup.callback(os.waitpid, spawned, 0)  # exits right after its fork
        return _follow(plan, _Lines(report_r), go, guarding, preparing, timeout)


def _prepare_disk(plan: LaunchPlan, go: socket.socket) -> None:
    """Mount the disk (detached), prepare it, hand it to the shim ("W"). On failure the shim
    is told to give up (EOF) and the error is this future's."""
    try:
        disk = rootfs.open_disk(plan.paths.disk)
        try:
            _prepare(plan, Path(f"/proc/self/fd/{disk}"))
            with contextlib.suppress(OSError):  # a shim that died: its report says why
                socket.send_fds(go, [b"W"], [disk])
        finally:
            os.close(disk)
    except BaseException:
        with contextlib.suppress(OSError):
            go.shutdown(socket.SHUT_WR)
        raise


def _prepare(plan: LaunchPlan, disk: Path) -> None:
    """The disk's layers (and volumes) for PID 1's overlay; ``disk`` is its root, mounted."""
    rootfs.claim_root(disk, plan.root_uid)  # a new disk's root is the host's root's
    upper, work = (disk / layer.relative_to(plan.paths.rw)
                   for layer in (plan.paths.upper, plan.paths.work))
    fresh = not upper.exists()
    for layer in (upper, work):
        if not layer.exists():
            layer.mkdir(mode=0o755)
            os.chown(layer, plan.root_uid, plan.root_uid)
    if fresh and plan.provision is not None:
        plan.provision(upper)
    if plan.config.app is not None:
        # a new volume belongs to the application's user, so that it can write its data
        volumes = disk / plan.paths.volumes.relative_to(plan.paths.rw)
        volumes.mkdir(mode=0o755, exist_ok=True)
        os.chown(volumes, plan.root_uid, plan.root_uid)
        uid, gid = plan.root_uid + plan.config.app.uid, plan.root_uid + plan.config.app.gid
        for source, _ in plan.volumes():
            with contextlib.suppress(FileExistsError):
                (disk / source.relative_to(plan.paths.rw)).mkdir(mode=0o755)
                os.chown(disk / source.relative_to(plan.paths.rw), uid, gid)


def _follow(plan: LaunchPlan, lines: _Lines, go: socket.socket, guarding: Future,
            preparing: Future, timeout: float) -> Launched:
    """Answer the shim's reports until it serves the console."""
    deadline = time.monotonic() + timeout
    monitor = pid1 = None
    try:
        while True:
            line = lines.next(deadline)
            kind, _, rest = (line or "").partition(" ")
            if line is None:
                raise DriverError("the container monitor died while starting the container")
            if kind == "monitor":
                monitor = ProcRef.of(int(rest))
            elif kind == "pid1":
                pid1 = ProcRef.of(int(rest))
                if pid1 is None:
                    raise DriverError("the container's PID 1 died during setup")
                if monitor is None:
                    raise DriverError("the container monitor did not say who it is")
                # while PID 1 waits for its disk and builds its root: the port's rules, then
                # the veth, the pid files, and "N" at once, so that PID 1 execs its init as
                # soon as its root is built, without another round trip through here
                guarding.result()
                network.add_container_link(plan.veth, plan.bridge, pid1.pid, plan.network)
                pid1.save(plan.paths.init_pid)
                monitor.save(plan.paths.shim_pid)  # the monitor serves the console as the shim
                _go(go, b"N")
            elif kind == "root" and pid1 is not None:
                preparing.result()  # (done: the shim had the disk)
            elif kind == "error":
                raise DriverError(rest)
            elif kind == "ready" and pid1 is not None:
                return Launched(shim=monitor, init=pid1)
            else:
                raise DriverError(f"container setup: unexpected report {line!r}")
    except BaseException as exc:
        if monitor is not None and monitor.alive():  # PID 1 gives up when its monitor dies
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor.pid, signal.SIGKILL)
        if pid1 is not None:  # cloned before its disk is ready: maybe in no cgroup yet
            _kill_and_wait(pid1)
        if isinstance(exc, (DriverError, OSError)) and not isinstance(exc, TimeoutError):
            # a disk that could not be prepared makes the shim give up, and its PID 1 dies
            # under the veth being configured: the disk is the cause to report
            with contextlib.suppress(TimeoutError):
                failed = preparing.exception(timeout=5.0)
                if failed is not None and failed is not exc:
                    raise failed from None
        if isinstance(exc, TimeoutError):
            raise DriverError(f"the container did not start within {timeout:.0f} s") from None
        raise


def _kill_and_wait(proc: ProcRef, timeout: float = 5.0) -> None:
    """SIGKILL ``proc`` (not a child of ours) and wait until it is gone."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    try:
        if proc.alive():  # the pid still names it (checked after opening: no reuse race)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _go(go: socket.socket, signal_byte: bytes) -> None:
    """A go-ahead for the shim; if it has died, its report (read next) says why."""
    with contextlib.suppress(OSError):
        go.sendall(signal_byte)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """This process's threads for the starts' parallel steps, kept between starts: creating a
    thread costs ~1 ms (several on a loaded host) of the start's time. Their tasks never wait
    for one another, so starts running at once share them safely."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="berth-start")
        return _pool


def _forget_helpers() -> None:
    """In a forked child (a Celery prefork worker) the parent's threads do not exist."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


class _Lines:
    """Newline-terminated messages from a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self, deadline: float | None = None) -> str | None:
        """The next message; None at EOF; TimeoutError after ``deadline`` (monotonic)."""
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")
