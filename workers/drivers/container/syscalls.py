"""Thin ctypes wrappers for the Linux syscalls the container driver needs (x86_64).

Python's standard library lacks unshare, mount, pivot_root, setns (before 3.12) and the new
mount API (open_tree / mount_setattr / move_mount) used for idmapped bind mounts.
Every wrapper raises OSError with the errno and a readable description of what was attempted.
"""

from __future__ import annotations

import ctypes
import os
import platform

if platform.machine() != "x86_64":  # the syscall numbers below are x86_64's
    raise ImportError("workers.drivers.container supports x86_64 only")

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_SYS_PIVOT_ROOT = 155
_SYS_SETNS = 308
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_CLOSE_RANGE = 436
_SYS_MOUNT_SETATTR = 442
_CLOSE_RANGE_CLOEXEC = 4
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


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


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= ``first`` close-on-exec (one syscall, however many fds are open)."""
    _check(_libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                         ctypes.c_uint(_CLOSE_RANGE_CLOEXEC)), "close_range")


def set_process_name(name: str) -> None:
    """Name shown by ps/top for this process (15 bytes max)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


def idmapped_bind(source: str | os.PathLike[str], target: str | os.PathLike[str],
                  userns_fd: int, *, readonly: bool = True) -> None:
    """Bind ``source`` on ``target`` with ids shifted by the user namespace ``userns_fd``.

    Files owned by host root in ``source`` then appear owned by the namespace's root: one
    shared image tree serves every container without a chown'ed copy. Needs host CAP_SYS_ADMIN.
    """
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD), _b(source),
                              ctypes.c_uint(_OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC)),
                f"open_tree {os.fspath(source)}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if readonly else 0), 0, 0,
                          userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"",
                             ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE), ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))),
               f"mount_setattr(idmap) {os.fspath(source)}")
        _check(_libc.syscall(_SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(_AT_FDCWD),
                             _b(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)),
               f"move_mount to {os.fspath(target)}")
    finally:
        os.close(fd)
