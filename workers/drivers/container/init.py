"""What the container's PID 1 does before it becomes the image's init.

Runs in the forked PID 1 (new user, mount, UTS, IPC, net and PID namespaces, already root
inside; the cgroup namespace comes right before the exec): builds the root filesystem, pivots
into it, creates the console pty from the container's own devpts, hands the pty to the
monitor, waits for the network and the cgroups, then execs the init. Everything used after pivot_root must already be imported: the host's Python
library is no longer reachable then.
"""

from __future__ import annotations

import array  # noqa: F401  (socket.send_fds needs it after pivot_root)
import fcntl
import os
import signal
import socket
import struct
import termios
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.container.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    close_range_cloexec,
    mount,
    pivot_root,
    umount,
)

TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
NO_SUID_DEV_EXEC = MS_NOSUID | MS_NODEV | MS_NOEXEC
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


# Host information a container has no business reading: covered like OCI runtimes do.
MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                "/proc/latency_stats")
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/kernel/security",
               "/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/config", "/sys/fs/pstore",
               "/sys/fs/bpf")


@dataclass(frozen=True)
class RootfsPlan:
    """The overlay's directories, relative to ``base`` (the container's state dir).

    Relative on purpose: overlayfs shows its options as given in the container's
    /proc/mounts, and absolute ones would reveal where the host keeps its containers.
    """

    base: Path
    lower: str  # idmapped bind of the image rootfs (mounted by the monitor)
    upper: str
    work: str
    merged: str
    hostname: str


def build_root(plan: RootfsPlan, *, console_shell: bool) -> None:
    """Mount everything the container sees and pivot into it. Afterwards '/' is the overlay."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates to or from the host
    socket.sethostname(plan.hostname)
    os.chdir(plan.base)
    mount("overlay", plan.merged, "overlay", 0,
          f"lowerdir={plan.lower},upperdir={plan.upper},workdir={plan.work},userxattr")
    root = str(plan.base / plan.merged)
    _write_hostname(root, plan.hostname)
    for mountpoint in ("proc", "sys", "dev", "run"):  # images may lack some; the layer gets them
        os.makedirs(f"{root}/{mountpoint}", mode=0o755, exist_ok=True)
    # /proc needs the new PID namespace and must be mounted while the host's /proc is still
    # visible (the kernel refuses a proc mount that would reveal more than an existing one).
    mount("proc", f"{root}/proc", "proc", NO_SUID_DEV_EXEC)
    mount("sysfs", f"{root}/sys", "sysfs", NO_SUID_DEV_EXEC | MS_RDONLY)
    for path in MASKED_FILES:
        if os.path.exists(root + path):
            mount("/dev/null", root + path, None, MS_BIND)
    for path in MASKED_DIRS:
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", NO_SUID_DEV_EXEC | MS_RDONLY, "size=0")
    mount("tmpfs", f"{root}/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1024k")
    for dev in DEVICES:  # no mknod in a user namespace: bind the host's harmless devices
        Path(f"{root}/dev/{dev}").touch()
        mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
    Path(f"{root}/dev/console").touch()
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(f"{root}/dev/{sub}")
    mount("devpts", f"{root}/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
          "newinstance,ptmxmode=0666,mode=620,gid=5")
    mount("shm", f"{root}/dev/shm", "tmpfs", NO_SUID_DEV_EXEC, "mode=1777,size=65536k")
    mount("mqueue", f"{root}/dev/mqueue", "mqueue", NO_SUID_DEV_EXEC)
    for target, name in (("pts/ptmx", "ptmx"), ("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
                         ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr")):
        os.symlink(target, f"{root}/dev/{name}")
    mount("tmpfs", f"{root}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=65536k")
    if console_shell:
        os.mkdir(f"{root}/run/berth", 0o755)
        Path(f"{root}{PID1_ENV_FILE}").write_text(PID1_ENV_SCRIPT)
    os.chdir(root)
    pivot_root(".", ".")  # the old root ends up stacked under '.', detach it
    umount(".", MNT_DETACH)
    os.chdir("/")


def _write_hostname(root: str, hostname: str) -> None:
    """Keep /etc/hostname in line with the ordered name (Debian's init scripts read it)."""
    if os.path.isdir(f"{root}/etc"):
        Path(f"{root}/etc/hostname").write_text(hostname + "\n")


def open_console(rows: int, cols: int) -> tuple[int, int]:
    """A pty from the container's own devpts: (master, slave). /dev/console is the slave.

    Taking it from the container's devpts (not the host's) means the container sees its
    console as /dev/pts/0 and cannot reach the host's ptys.
    """
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt()
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    # size before the shell starts, else its first SIGWINCH redraws the prompt
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    mount(os.ttyname(slave), "/dev/console", None, MS_BIND)
    return master, slave


def exec_init(argv: tuple[str, ...], env: dict[str, str], slave: int, *,
              controlling_tty: bool) -> None:
    """Become the image's init on the console. Returns only by raising OSError.

    ``controlling_tty``: when PID 1 is the console shell it needs the console as its
    controlling terminal (job control, ^C, SIGWINCH). A real init must not get one: our
    /dev/console is a pty, not the kernel's console device, so a session leader opening it
    (sysvinit does, without O_NOCTTY) would own it, and the getty it starts later could not
    make it the login's controlling terminal. So it is not made a session leader; it calls
    setsid() itself once it has looked at its console.
    """
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    if controlling_tty:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # dispositions and mask inherited from the worker (Python ignores SIGPIPE, XFSZ) would
    # leak into every process of the container
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                continue
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    close_range_cloexec(3)  # nothing of the worker's (sockets, files) reaches the container
    os.execve(argv[0], list(argv), env)
