"""What a container's root may still do: its capabilities and its seccomp filter.

Both are applied by PID 1 (berth-shim's launch.c) right before it execs the image's init, so
everything the container ever runs inherits them and nothing inside can undo them.

Capabilities. Container root's capabilities are already confined to its own user namespace
(it owns nothing of the host), but each one still opens kernel code to a tenant. The bounding
set keeps Docker's default list, which is what ordinary software (package managers, daemons
that drop privileges, ping, su) needs, plus CAP_SYS_BOOT: in a PID namespace reboot(2) only
ends the container's own init (that is how ``poweroff`` inside stops the container). Left out
on purpose, notably:

* CAP_SYS_ADMIN: mounting filesystems (the kernel's largest attack surface reachable from a
  user namespace), sethostname (the hostname is the panel's), setns/unshare of namespaces;
* CAP_NET_ADMIN: reconfiguring eth0 and, above all, nf_tables, where most recent
  user-namespace privilege escalations were found; Berth configures the network from outside;
* CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_TIME, CAP_SYSLOG, CAP_BPF,
  CAP_PERFMON, CAP_DAC_READ_SEARCH (open_by_handle_at), CAP_IPC_LOCK, CAP_SYS_RESOURCE...

Seccomp. A deny-list like Docker's default profile, as a classic BPF program built here:
syscalls that load or replace kernel code, reach kernel-wide state (keys, time, swap, quota,
the kernel log), or are large attack surfaces (bpf, perf_event_open, userfaultfd, io_uring,
the mount API) fail with EPERM; creating a user namespace (clone/unshare with CLONE_NEWUSER,
which would hand a tenant a full capability set again) fails with EPERM; clone3, whose flags
a filter cannot read, fails with ENOSYS so that libc falls back to clone. Only x86_64 system
calls are allowed at all: i386 and x32 numbers differ (and their compatibility entry points
were the site of past kernel bugs), so such a call kills the process.
"""

from __future__ import annotations

import functools
import platform
import struct

CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
KEPT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SYS_BOOT",
)


def capability_mask(names: tuple[str, ...] = KEPT_CAPABILITIES) -> int:
    """The bit mask of ``names`` (as in /proc/<pid>/status CapBnd)."""
    return functools.reduce(lambda mask, name: mask | 1 << CAPABILITIES[name], names, 0)


# x86_64 system call numbers (asm/unistd_64.h); a test checks them against the header.
SYSCALLS = {
    "clone": 56, "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "iopl": 172, "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176,
    "get_kernel_syms": 177, "query_module": 178, "quotactl": 179, "nfsservctl": 180,
    "lookup_dcookie": 212, "clock_settime": 227, "add_key": 248, "request_key": 249,
    "keyctl": 250, "kexec_load": 246, "unshare": 272, "perf_event_open": 298,
    "fanotify_init": 300, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
    "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
    "quotactl_fd": 443, "syslog": 103, "pivot_root": 155,
}
DENIED = (
    # kernel code
    "init_module", "finit_module", "delete_module", "create_module", "kexec_load",
    "kexec_file_load", "bpf", "get_kernel_syms", "query_module", "uselib",
    # kernel-wide state
    "keyctl", "add_key", "request_key", "settimeofday", "clock_settime", "clock_adjtime",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "_sysctl", "sysfs",
    "ustat", "nfsservctl", "lookup_dcookie", "iopl", "ioperm",
    # attack surface, or ways around the mount namespace and the capability set
    "perf_event_open", "userfaultfd", "open_by_handle_at", "name_to_handle_at", "kcmp",
    "fanotify_init", "io_uring_setup", "io_uring_enter", "io_uring_register", "mount",
    "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "setns",
)
CLONE_NEWUSER = 0x10000000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS = 1, 38

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16

# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K, JGE_K, JSET_K = 0x15, 0x35, 0x45
RET_K = 0x06
_INSN = struct.Struct("<HBBI")  # struct sock_filter { u16 code; u8 jt, jf; u32 k; }


class _Program:
    """Instructions whose jump targets are labels, resolved on ``assemble``."""

    def __init__(self) -> None:
        self.insns: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self.insns.append((LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, true: str | int = 0, false: str | int = 0) -> None:
        """Conditional jump; a target is a label or 0 (the next instruction)."""
        self.insns.append((op, true, false, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def ret(self, value: int) -> None:
        self.insns.append((RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = []
        for index, (code, jt, jf, k) in enumerate(self.insns):
            offsets = [self.labels[t] - index - 1 if isinstance(t, str) else t for t in (jt, jf)]
            if not all(0 <= o < 256 for o in offsets):
                raise ValueError(f"seccomp jump out of range at instruction {index}")
            out.append(_INSN.pack(code, offsets[0], offsets[1], k))
        return b"".join(out)


@functools.cache
def seccomp_program() -> bytes:
    """The container's filter as an array of ``struct sock_filter`` (x86_64)."""
    if platform.machine() != "x86_64":
        raise RuntimeError("the container seccomp filter knows x86_64 system calls only")
    p = _Program()
    p.load(OFFSET_ARCH)
    p.jump(JEQ_K, AUDIT_ARCH_X86_64, 0, "kill")
    p.load(OFFSET_NR)
    p.jump(JGE_K, X32_SYSCALL_BIT, "kill", 0)
    for name in DENIED:
        p.jump(JEQ_K, SYSCALLS[name], "eperm", 0)
    p.jump(JEQ_K, SYSCALLS["clone3"], "enosys", 0)
    p.jump(JEQ_K, SYSCALLS["clone"], "flags", 0)
    p.jump(JEQ_K, SYSCALLS["unshare"], "flags", 0)
    p.ret(RET_ALLOW)
    p.label("flags")  # clone(flags, ...) and unshare(flags): no new user namespace
    p.load(OFFSET_ARG0)  # the low 32 bits (little-endian) hold every namespace flag
    p.jump(JSET_K, CLONE_NEWUSER, "eperm", 0)
    p.ret(RET_ALLOW)
    p.label("eperm")
    p.ret(RET_ERRNO | EPERM)
    p.label("enosys")
    p.ret(RET_ERRNO | ENOSYS)
    p.label("kill")
    p.ret(RET_KILL_PROCESS)
    return p.assemble()
