"""Starting a container so that it outlives the process that asked for it.

The caller (a Celery prefork child, a test) forks a short-lived intermediate that forks the
*monitor* and exits: the monitor is then nobody's child but init's (or a subreaper's), in its
own session, so worker restarts never reach it. The monitor runs the namespace sequence; the
caller does the host-side work it can (cgroups, disk, firewall, veth) in parallel, because it is
warm: in a fresh fork every Python object touched is a copy-on-write page fault (~4 µs each on
these VMs), which made the same netlink and nftables calls 3-5 times slower in the monitor.

    caller                    monitor                  stage 1                 PID 1
    fork ------------------>  fork ------------------> unshare(USER), "U"
    cgroups, disk mounted,
    "D" ------------------->  uid_map/gid_map,
    (thread) firewall rules   idmapped bind of the
                              image, "G" ------------> setresuid(0), unshare(NS|UTS|
                                                       IPC|NET|PID), fork ---> (new namespaces)
                              <----------------------- "P <pid>", exit         mounts, pivot_root,
    <---- "pid1 <pid>"                                                         pty, master+slave
    (thread) PID 1 into       <----------------------------------------------- fds, "R"
      the cgroups             unmount the host's mounts
    <---- "root"
    veth + eth0 addressed
    "N" ------------------->  "X" -------------------------------------------> unshare(CGROUP),
                              execve(berth-shim), keeping the pty, the         execve(init)
    <---- "ready"             console socket and PID 1 as its child; the shim
                              reports once PID 1's exec closed its pipe

If the caller dies midway, the monitor reads EOF where it waits for "N" and gives up; if the
monitor dies, stage 1 (parent-death signal) and PID 1 (EOF on its pipe) give up too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import signal
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig, NetworkSpec
from workers.drivers.container import firewall, network, rootfs
from workers.drivers.container.cgroups import Cgroup, Limits
from workers.drivers.container.init import (
    PID1_ENV_FILE,
    RootfsPlan,
    build_root,
    exec_init,
    open_console,
)
from workers.drivers.container.state import IDS_PER_CONTAINER, ContainerPaths, ProcRef
from workers.drivers.container.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MNT_DETACH,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    close_range_cloexec,
    idmapped_bind,
    prctl,
    set_process_name,
    umount,
    unshare,
)
from workers.images.base import ImageConfig

# CLONE_NEWCGROUP comes later, from PID 1 itself once it has been moved into its cgroups
# (a cgroup namespace is rooted where its creator is at that moment)
NEW_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a start needs; the monitor is a fork of the caller, so nothing is serialized."""

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
    winsize: tuple[int, int] = (24, 80)

    def init_env(self) -> dict[str, str]:
        env = {"container": "berth", **self.config.env}
        if self.config.console_shell:
            env["ENV"] = PID1_ENV_FILE
        return env


@dataclass(frozen=True)
class Launched:
    shim: ProcRef
    init: ProcRef


def launch(plan: LaunchPlan, timeout: float = 30.0) -> Launched:
    """Start the container detached from the caller; return once its shim serves the console.

    Raises DriverError on failure, with the host-side pieces possibly still in place: the
    driver's teardown removes them (it has to anyway if this process is killed midway).
    """
    firewall.libnftables()  # loaded here once, not in every monitor
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(report_r)
            os.close(go_w)
            if os.fork() == 0:
                _monitor(plan, report_w, go_r)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    try:
        _prepare(plan)  # while the monitor starts; it waits for "D" before it needs them
        os.write(go_w, b"D")
        return _follow(plan, _Lines(report_r), go_w, timeout)
    finally:
        os.close(report_r)
        os.close(go_w)
        os.waitpid(intermediate, 0)


def _prepare(plan: LaunchPlan) -> None:
    """The host-side pieces that must exist before the container's namespaces do."""
    plan.cgroup.create(plan.limits)
    # mounted before the container's mount namespace copies ours; the monitor unmounts it
    rootfs.mount_disk(plan.paths.disk, plan.paths.rw)
    for layer in (plan.paths.upper, plan.paths.work):
        if not layer.exists():
            layer.mkdir(mode=0o755)
            os.chown(layer, plan.root_uid, plan.root_uid)


def _follow(plan: LaunchPlan, lines: _Lines, go: int, timeout: float) -> Launched:
    """Answer the monitor's reports until the shim is ready."""
    deadline = time.monotonic() + timeout
    monitor = None
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the rules exist before the port does (it is never unguarded): waited for below
        guarding = pool.submit(firewall.add_port, plan.host, plan.veth, plan.network,
                               plan.network_group)
        joining: Future | None = None
        try:
            while True:
                line = lines.next(deadline)
                if line is None:
                    raise DriverError("the container monitor died while starting the container")
                kind, _, rest = line.partition(" ")
                if kind == "monitor":
                    monitor = int(rest)
                elif kind == "pid1":
                    # A cgroup v1 migration waits for an RCU grace period (~6-15 ms): it runs
                    # while PID 1 builds its root and the veth is made.
                    pid1 = int(rest)
                    joining = pool.submit(plan.cgroup.add, pid1)
                elif kind == "root" and joining is not None:
                    # The veth once PID 1's mounts are done: overlapping the two was not
                    # faster on these 2-CPU machines, they only competed.
                    guarding.result()
                    network.add_container_link(plan.veth, plan.bridge, pid1, plan.network)
                    joining.result()
                    os.write(go, b"N")
                elif kind == "error":
                    raise DriverError(rest)
                elif kind == "ready":
                    break
                else:
                    raise DriverError(f"container setup: unexpected report {line!r}")
        except BaseException as exc:
            if monitor is not None:  # its children give up on their own when it dies
                with contextlib.suppress(ProcessLookupError):
                    os.kill(monitor, signal.SIGKILL)
            if isinstance(exc, TimeoutError):
                raise DriverError(f"the container did not start within {timeout:.0f} s") from None
            raise
    shim, init = ProcRef.load(plan.paths.shim_pid), ProcRef.load(plan.paths.init_pid)
    if shim is None or init is None:
        raise DriverError("the container monitor reported ready but wrote no pid files")
    return Launched(shim=shim, init=init)


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

    def push_back(self, line: str | None) -> None:
        """Return a message read too early; the next call to next() gives it again."""
        if line is not None:
            self.buf = line.encode() + b"\n" + self.buf


def describe(exc: BaseException) -> str:
    """An error as a person reads it: no "[Errno 2]" prefix, no exception class names."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) if isinstance(exc, DriverError) else repr(exc)


def _rel(path: Path, base: Path) -> str:
    return str(path.relative_to(base))


def _send(fd: int, message: str) -> None:
    os.write(fd, message.replace("\n", " ").encode() + b"\n")


def _monitor(plan: LaunchPlan, report: int, go: int) -> None:  # pragma: no cover - forked child
    """Body of the monitor process; ends in execve(berth-shim) or os._exit."""
    try:
        gc.disable()  # a collection would touch (copy) every object inherited from the caller
        os.setsid()
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # PID 1 is ours once stage 1 has exited
        _send(report, f"monitor {os.getpid()}")
        _Startup(plan, report, go).run()
    except BaseException as exc:  # noqa: BLE001 - everything must reach the caller as text
        with contextlib.suppress(OSError):
            _send(report, f"error {describe(exc)}")
    finally:
        os._exit(1)


class _Startup:
    """The monitor's side of the namespace sequence (see the module docstring)."""

    def __init__(self, plan: LaunchPlan, report: int, go: int) -> None:
        self.plan = plan
        self.report = report
        self.go = go
        self.stage1: int | None = None
        self.pid1: int | None = None
        self.root_ready = False
        self.lower_mounted = False

    def run(self) -> None:
        plan = self.plan
        self.p2c_r, self.p2c_w = os.pipe()
        c2p_r, self.c2p_w = os.pipe()
        self.fds_parent, self.fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.stage1 = os.fork()
            if self.stage1 == 0:
                self._stage1()
            self._settle()  # while stage 1 unshares
            os.close(self.c2p_w)
            self.fds_child.close()
            msgs = _Lines(c2p_r)
            self._expect(msgs, "U")
            self._wait_for(b"D")  # the caller's cgroups and disk
            self._map_and_bind()
            os.write(self.p2c_w, b"G")
            self.pid1 = int(self._expect_first(msgs, "P", also="R"))
            _send(self.report, f"pid1 {self.pid1}")
            if not self.root_ready:
                self._expect(msgs, "R")
            _send(self.report, "root")
            _, fds, _, _ = socket.recv_fds(self.fds_parent, 16, 2)
            master, slave = fds
            # PID 1's mount namespace keeps its copies; the host keeps nothing mounted
            umount(plan.paths.lower, MNT_DETACH)
            self.lower_mounted = False
            umount(plan.paths.rw, MNT_DETACH)
            os.waitpid(self.stage1, 0)
            self._wait_for(b"N")  # network and cgroups are the caller's part
            init = ProcRef.of(self.pid1)
            if init is None:
                raise DriverError("the container's PID 1 died during setup")
            init.save(plan.paths.init_pid)
            listener = self._listen()
            ProcRef.of(os.getpid()).save(plan.paths.shim_pid)  # the shim keeps our pid
            os.write(self.p2c_w, b"X")
        except BaseException:
            self._undo()
            raise
        # the shim reports "ready" once PID 1's exec closed this pipe, or its error
        self._exec_shim(master, slave, listener, c2p_r)

    @staticmethod
    def _settle() -> None:
        """The monitor's own setup, done while stage 1 works."""
        set_process_name("berth-monitor")
        # a fork keeps the caller's view of a running asyncio loop, which would make
        # pyroute2's synchronous API refuse to work here
        asyncio._set_running_loop(None)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _wait_for(self, signal_byte: bytes) -> None:
        if os.read(self.go, 1) != signal_byte:  # EOF: the caller failed or died
            raise DriverError("the driver gave up starting the container")

    def _expect_first(self, msgs: _Lines, tag: str, *, also: str) -> str:
        """Like _expect, but ``also`` may come first: stage 1's "P" and PID 1's "R" share one
        pipe, and a quick PID 1 can report before its parent does."""
        line = msgs.next()
        if line is not None and line.startswith(also):
            self.root_ready = True
            return self._expect(msgs, tag)
        msgs.push_back(line)
        return self._expect(msgs, tag)

    def _expect(self, msgs: _Lines, tag: str) -> str:
        line = msgs.next()
        if line is None:
            raise DriverError("container setup failed: a setup process died")
        if line.startswith("E "):
            raise DriverError(line[2:])
        if not line.startswith(tag):
            raise DriverError(f"container setup: unexpected message {line!r}")
        return line[len(tag):].strip()

    def _map_and_bind(self) -> None:
        plan, pid = self.plan, self.stage1
        mapping = f"0 {plan.root_uid} {IDS_PER_CONTAINER}\n"
        Path(f"/proc/{pid}/uid_map").write_text(mapping)
        Path(f"/proc/{pid}/gid_map").write_text(mapping)
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            idmapped_bind(plan.image_rootfs, plan.paths.lower, userns)
            self.lower_mounted = True
        finally:
            os.close(userns)

    def _listen(self) -> socket.socket:
        path = self.plan.paths.console
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: only root may attach
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(64)  # a burst of viewers waits in the backlog until the shim accepts
        return sock

    def _exec_shim(self, master: int, slave: int, listener: socket.socket, exec_status: int) -> None:
        plan = self.plan
        keep = (master, slave, listener.fileno(), self.report, exec_status)
        null = os.open("/dev/null", os.O_RDWR)
        log = os.open(plan.paths.shim_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        close_range_cloexec(3)
        for fd in keep:
            os.set_inheritable(fd, True)
        argv = [str(plan.shim), "-m", str(master), "-s", str(slave), "-l", str(listener.fileno()),
                "-p", str(self.pid1), "-e", str(plan.paths.exit_status), "-r", str(self.report),
                "-x", str(exec_status), "-S", str(plan.paths.console), "-n", plan.uuid]
        for directory in plan.cgroup.paths().values():
            argv += ["-c", directory]
        try:
            os.execv(plan.shim, argv)
        except OSError as exc:
            self._undo()
            raise DriverError(f"cannot run the console shim {plan.shim}: {exc.strerror}") from exc

    def _undo(self) -> None:
        """Stop what this monitor started; the driver's teardown removes the rest."""
        for pid in (self.stage1, self.pid1):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.lower_mounted:
            with contextlib.suppress(OSError):
                umount(self.plan.paths.lower, MNT_DETACH)

    # -- children --------------------------------------------------------------------------

    def _stage1(self) -> None:  # pragma: no cover - forked child
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the monitor died: give up
            os.close(self.p2c_w)
            self.fds_parent.close()
            unshare(CLONE_NEWUSER)  # we are single-threaded right after fork, as it requires
            _send(self.c2p_w, "U")
            if os.read(self.p2c_r, 1) != b"G":
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setgroups([])  # allowed: gid_map was written by a privileged process
            os.setresuid(0, 0, 0)
            unshare(NEW_NAMESPACES)
            pid1 = os.fork()  # the first child in the new PID namespace is its PID 1
            if pid1 == 0:
                self._pid1()
            _send(self.c2p_w, f"P {pid1}")
        except BaseException as exc:  # noqa: BLE001
            with contextlib.suppress(OSError):
                _send(self.c2p_w, f"E container setup (stage 1): {describe(exc)}")
        finally:
            os._exit(0)

    def _pid1(self) -> None:  # pragma: no cover - forked child, becomes the container's init
        plan, paths = self.plan, self.plan.paths
        try:
            build_root(RootfsPlan(base=paths.dir, lower=_rel(paths.lower, paths.dir),
                                  upper=_rel(paths.upper, paths.dir),
                                  work=_rel(paths.work, paths.dir),
                                  merged=_rel(paths.merged, paths.dir), hostname=plan.hostname),
                       console_shell=plan.config.console_shell)
            master, slave = open_console(*plan.winsize)
            socket.send_fds(self.fds_child, [b"M"], [master, slave])
            os.close(master)
            _send(self.c2p_w, "R")
            if os.read(self.p2c_r, 1) != b"X":
                os._exit(1)
            unshare(CLONE_NEWCGROUP)
            exec_init(plan.config.init, plan.init_env(), slave,
                      controlling_tty=plan.config.console_shell)
        except BaseException as exc:  # noqa: BLE001
            init = plan.config.init[0]
            if isinstance(exc, OSError) and exc.filename == init:
                message = f"cannot run {init} in the container: {exc.strerror}"
            else:
                message = f"container setup (PID 1): {describe(exc)}"
            with contextlib.suppress(OSError):
                _send(self.c2p_w, f"E {message}")
        finally:
            os._exit(127)
