"""Thin ctypes wrappers for the Linux syscalls the container driver's Python side needs.

The namespace sequence itself is C (workers/shim/launch.c); Python only mounts the writable
layer, detaches leftover mounts and enters a container's network namespace to address eth0.
Every wrapper raises OSError with the errno and a readable description of what was attempted.
"""

from __future__ import annotations

import ctypes
import os
import platform

if platform.machine() != "x86_64":  # the syscall numbers below are x86_64's
    raise ImportError("workers.drivers.container supports x86_64 only")

CLONE_NEWNET = 0x40000000

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2

_SYS_SETNS = 308

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return os.fsencode(value)


def mount(source: str | None, target: str | os.PathLike[str], fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount {fstype or source or ''} on {os.fspath(target)}")


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {os.fspath(target)}")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")
