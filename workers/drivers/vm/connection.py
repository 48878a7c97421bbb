"""libvirt connections for the VM driver: one event loop thread per process, readable errors.

libvirt delivers stream data (consoles), lifecycle events and keepalives only to connections
opened after an event implementation is registered, so every connection in this package is
opened through :func:`open_connection`, which starts the default implementation in a daemon
thread first. The asyncio side (console sessions) is bridged with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import libvirt

from workers.drivers.base import DriverError, InstanceNotFound

_loop_lock = threading.Lock()
_loop_started = False

T = TypeVar("T")


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we raise them instead."""


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _run_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def open_connection(uri: str) -> libvirt.virConnect:
    """Open ``uri`` with events enabled and a keepalive, so a dead libvirtd is noticed."""
    ensure_event_loop()
    with libvirt_errors(f"cannot connect to libvirt at {uri}"):
        conn = libvirt.open(uri)
    if not uri.startswith("test:"):
        # 5 s interval, 3 missed answers: a restarted libvirtd is detected within ~20 s even
        # when no call is made (the event watcher relies on the close callback this triggers).
        conn.setKeepAlive(5, 3)
    return conn


def describe(err: libvirt.libvirtError) -> str:
    """libvirt's message without its internal prefix noise."""
    msg = err.get_error_message() or str(err)
    return msg.strip()


def is_no_domain(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def is_connection_lost(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                    libvirt.VIR_ERR_INTERNAL_ERROR) and (
        "connection" in describe(err).lower() or "closed" in describe(err).lower()
        or "end of file" in describe(err).lower()
    )


@contextmanager
def libvirt_errors(action: str, *, uuid: str | None = None) -> Iterator[None]:
    """Turn a libvirtError into a DriverError saying what we were doing and why it failed."""
    try:
        yield
    except libvirt.libvirtError as err:
        if uuid is not None and is_no_domain(err):
            raise InstanceNotFound(f"instance {uuid} does not exist on this host") from err
        raise DriverError(f"{action}: {describe(err)}") from err


def call(action: str, fn: Callable[[], T]) -> T:
    """Run one libvirt call, wrapping its error (for expressions where a ``with`` is awkward)."""
    with libvirt_errors(action):
        return fn()
