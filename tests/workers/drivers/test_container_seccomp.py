"""The container's seccomp filter and capability set, checked without a container: the BPF
program is run by a small classic-BPF interpreter against the system calls it must refuse or
let through. (test_container_escape.py checks the same from inside real containers.)"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from workers.drivers.container import security
from workers.drivers.container.security import (
    AUDIT_ARCH_X86_64,
    CLONE_NEWUSER,
    DENIED,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    SYSCALLS,
    capability_mask,
    seccomp_program,
)

AUDIT_ARCH_I386 = 0x40000003
EPERM, ENOSYS = RET_ERRNO | 1, RET_ERRNO | 38
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def run_filter(nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> int:
    """What the kernel would do: the filter's return value for this system call."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(tuple(args) + (0,) * (6 - len(args))))
    program = seccomp_program()
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc = acc = 0
    for _ in range(len(insns)):  # classic BPF only jumps forward
        code, jt, jf, k = insns[pc]
        if code == security.LD_W_ABS:
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code in (security.JEQ_K, security.JGE_K, security.JSET_K):
            taken = {security.JEQ_K: acc == k, security.JGE_K: acc >= k,
                     security.JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == security.RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program did not return")


@pytest.mark.skipif(not UNISTD.exists(), reason="kernel headers not installed")
def test_syscall_numbers_match_the_kernel_headers():
    header = dict(re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()))
    assert {name: str(nr) for name, nr in SYSCALLS.items()} == {n: header[n] for n in SYSCALLS}


@pytest.mark.parametrize("name", DENIED)
def test_dangerous_syscalls_fail_with_eperm(name):
    assert run_filter(SYSCALLS[name]) == EPERM


@pytest.mark.parametrize("nr", [0, 1, 2, 39, 57, 59, 60, 61, 101, 169, 231, 257, 435 - 1])
def test_ordinary_syscalls_pass(nr):  # read write open getpid fork execve exit kill wait4
    assert run_filter(nr) == RET_ALLOW  # ptrace (in its own PID namespace), reboot, exit_group...


def test_no_new_user_namespace_but_clone_and_unshare_otherwise_work():
    clone, unshare = SYSCALLS["clone"], SYSCALLS["unshare"]
    fork_flags = 0x01200011  # what glibc's fork() passes
    assert run_filter(clone, args=(fork_flags,)) == RET_ALLOW
    assert run_filter(clone, args=(fork_flags | CLONE_NEWUSER,)) == EPERM
    assert run_filter(unshare, args=(0x00000400,)) == RET_ALLOW  # CLONE_FS
    assert run_filter(unshare, args=(CLONE_NEWUSER | 0x00020000,)) == EPERM
    # the flag is in the low word of the 64-bit argument: high bits do not hide it
    assert run_filter(unshare, args=(CLONE_NEWUSER | 1 << 40,)) == EPERM


def test_clone3_says_enosys_so_libc_falls_back_to_clone():
    assert run_filter(SYSCALLS["clone3"]) == ENOSYS


def test_other_abis_are_killed():
    assert run_filter(20, arch=AUDIT_ARCH_I386) == RET_KILL_PROCESS  # i386 getpid
    assert run_filter(0x40000000 | 39) == RET_KILL_PROCESS  # x32 getpid


def test_capabilities_kept_are_dockers_plus_sys_boot():
    mask = capability_mask()
    kept = {name for name, bit in security.CAPABILITIES.items() if mask & 1 << bit}
    assert kept == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                    "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD",
                    "AUDIT_WRITE", "SETFCAP", "SYS_BOOT"}
    assert mask == 0xA84425FB  # as /proc/<pid>/status shows it (CapBnd)
