"""Thin ctypes wrappers for the Linux syscalls the container driver's Python side needs.

The namespace sequence itself is C (workers/shim/launch.c); Python only mounts the writable
layer (as a detached mount, handed to the shim: ``fsmount``), detaches leftover mounts and
enters a container's network namespace to address eth0.
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
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

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


def fsmount(fstype: str, source: str, flags: tuple[str, ...] = (), attrs: int = 0) -> int:
    """A new ``fstype`` filesystem from ``source``, as a detached mount: an O_CLOEXEC file
    descriptor (``move_mount`` attaches it, in any mount namespace; closing it unmounts)."""
    what = f"mount {fstype} from {source}"
    fsfd = _check(_libc.syscall(_SYS_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), what)
    try:
        _check(_libc.syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_STRING),
                             b"source", _b(source), ctypes.c_int(0)), what)
        for flag in flags:
            _check(_libc.syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_SET_FLAG),
                                 _b(flag), None, ctypes.c_int(0)), f"{what} ({flag})")
        _check(_libc.syscall(_SYS_FSCONFIG, ctypes.c_int(fsfd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                             None, None, ctypes.c_int(0)), what)
        return _check(_libc.syscall(_SYS_FSMOUNT, ctypes.c_int(fsfd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                                    ctypes.c_uint(attrs)), what)
    finally:
        os.close(fsfd)
