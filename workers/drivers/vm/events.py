"""Lifecycle events of this host's VMs, pushed by libvirt: the host agent's source of truth.

A guest that powers itself off, a domain destroyed with virsh, a crash: libvirt reports each
as a lifecycle event, and the watcher turns it into ``callback(uuid, PowerState, reason)``
for domains of this Berth host only. When libvirtd restarts, the connection's close callback
fires; the watcher reconnects (retrying with backoff) and then reports the current state of
every domain, since events sent while it was away are lost.

Callbacks run in libvirt's event thread: keep them short, and hand over to asyncio with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import libvirt

from workers.drivers.base import HostConfig, PowerState
from workers.drivers.vm.connection import open_connection
from workers.drivers.vm.naming import berth_uuid, owns_domain_name

log = logging.getLogger(__name__)

LifecycleCallback = Callable[[str, PowerState, str], None]

_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", ("added", "updated", "renamed", "snapshot")),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", ("removed", "renamed")),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", ("booted", "migrated", "restored",
                                                   "from snapshot", "wakeup")),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("paused", ("paused", "migrated", "I/O error",
                                                    "watchdog", "restored", "from snapshot",
                                                    "API error", "postcopy",
                                                    "postcopy failed")),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", ("unpaused", "migrated", "from snapshot",
                                                   "postcopy", "postcopy failed")),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", ("guest powered off", "destroyed", "crashed",
                                                   "migrated", "saved", "failed",
                                                   "from snapshot")),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutting down", ("finished", "by guest", "by host")),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("suspended by the guest", ("memory", "disk")),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", ("panicked", "crashloaded")),
}


def describe_event(event: int, detail: int) -> str:
    name, details = _EVENTS.get(event, (f"event {event}", ()))
    why = details[detail] if 0 <= detail < len(details) else f"detail {detail}"
    return f"{name}: {why}"


def state_after(event: int, active: bool) -> PowerState | None:
    """The power state an event leaves the domain in; None when it says nothing new."""
    if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
        return PowerState.ABSENT
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED,
                 libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED):
        return PowerState.RUNNING  # a paused domain still holds its memory and CPUs
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return PowerState.STOPPED
    if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
        return PowerState.RUNNING if active else PowerState.STOPPED
    return None  # SHUTDOWN (a STOPPED follows), CRASHED (a STOPPED follows with on_crash)


class LifecycleWatcher:
    """Watches one libvirt connection for this host's domains; reconnects after a restart."""

    def __init__(self, host: HostConfig, callback: LifecycleCallback, *, uri: str | None = None,
                 reconnect_delay: float = 1.0, max_reconnect_delay: float = 30.0) -> None:
        self.host = host
        self.uri = uri or host.libvirt_uri
        self._callback = callback
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._stopped = threading.Event()
        self._reconnecting = False
        self._known: set[str] = set()
        self.connected = threading.Event()
        self.reconnects = 0

    def start(self) -> None:
        """Connect, subscribe, and report the current state of every domain of this host."""
        self._stopped.clear()
        self._connect()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            conn, cb_id = self._conn, self._callback_id
            self._conn = self._callback_id = None
            self.connected.clear()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            if cb_id is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb_id)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _connect(self, *, reconnect: bool = False) -> None:
        conn = open_connection(self.uri)
        try:
            cb_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
            if not self.uri.startswith("test:"):
                conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
        with self._lock:
            self._conn, self._callback_id = conn, cb_id
            self.reconnects += reconnect
        self.connected.set()
        self.resync()

    def resync(self) -> None:
        """Report every domain's current state (and ABSENT for ones that vanished)."""
        with self._lock:
            conn = self._conn
        if conn is None:
            return
        seen = set()
        for dom in conn.listAllDomains(0):
            try:
                if not owns_domain_name(self.host, dom.name()):
                    continue
                uuid = berth_uuid(self.host, dom.name(), dom.UUIDString())
                state = PowerState.RUNNING if dom.isActive() else PowerState.STOPPED
            except libvirt.libvirtError:
                continue  # undefined while we listed: its UNDEFINED event follows
            seen.add(uuid)
            self._emit(uuid, state, "resync")
        for uuid in self._known - seen:
            self._emit(uuid, PowerState.ABSENT, "resync: no longer defined")
        self._known = seen

    def _emit(self, uuid: str, state: PowerState, reason: str) -> None:
        if state is PowerState.ABSENT:
            self._known.discard(uuid)
        else:
            self._known.add(uuid)
        try:
            self._callback(uuid, state, reason)
        except Exception:  # a failing consumer must not kill libvirt's event thread
            log.exception("lifecycle callback failed for %s", uuid)

    def _on_event(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                  detail: int, _opaque: object) -> None:
        try:
            if not owns_domain_name(self.host, dom.name()):
                return
            uuid = berth_uuid(self.host, dom.name(), dom.UUIDString())
            active = bool(dom.isActive()) if event == libvirt.VIR_DOMAIN_EVENT_DEFINED else False
        except libvirt.libvirtError:
            return
        state = state_after(event, active)
        if state is not None:
            self._emit(uuid, state, describe_event(event, detail))

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Event thread: never block here; reconnecting (with retries) happens in its own thread.
        if self._stopped.is_set():
            return
        with self._lock:
            if self._reconnecting:
                return
            self._reconnecting = True
            self._conn = self._callback_id = None
            self.connected.clear()
        log.warning("libvirt connection to %s closed (reason %s); reconnecting", self.uri, reason)
        threading.Thread(target=self._reconnect, name="libvirt-reconnect", daemon=True).start()

    def _reconnect(self) -> None:
        delay = self._delay
        try:
            while not self._stopped.wait(delay):
                try:
                    self._connect(reconnect=True)
                except Exception as exc:  # libvirtd still down, or coming up
                    log.info("reconnect to %s failed: %s", self.uri, exc)
                    delay = min(delay * 2, self._max_delay)
                    continue
                return
        finally:
            with self._lock:
                self._reconnecting = False
