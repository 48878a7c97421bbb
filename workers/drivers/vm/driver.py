"""The VM backend of the Driver protocol: Berth instances as libvirt domains (QEMU/KVM or TCG).

Every operation looks the domain up by its Berth name, is idempotent, and wraps libvirt's
errors into DriverError. Domains start paused so the caller can attach its console relay
first (``before_resume``) and stream the guest's output from its first line.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from workers.drivers.base import (
    ConsoleEndpoint,
    DriverError,
    HostConfig,
    InstanceNotFound,
    InstanceSpec,
    InstanceStats,
    InstanceStatus,
    PowerState,
)
from workers.drivers.vm.capabilities import Virtualization, detect_virtualization
from workers.drivers.vm.connection import describe, libvirt_errors, open_connection
from workers.drivers.vm.console import LibvirtConsoleSession, SerialLog
from workers.drivers.vm.daemons import ensure_daemons
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.naming import (
    METADATA_NS,
    berth_uuid,
    check_uuid,
    domain_name,
    libvirt_uuid,
    owns_domain_name,
)
from workers.drivers.vm.storage import (
    GIB,
    InstanceFiles,
    create_config_disk,
    create_overlay,
    ensure_traversable,
    grow_overlay,
    make_instance_dir,
    remove_instance_dir,
)
from workers.drivers.vm.xml import CDROM_DEV, domain_xml, validate

BeforeResume = Callable[[], None]

PROBE_IMAGE = "tiny"
_POLL = 0.05
_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
_RUNNING_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended by the guest",
}


class VmDriver:
    """Driver for ``kind == "vm"`` instances on one Berth host."""

    kind = "vm"

    def __init__(self, host: HostConfig, *, uri: str | None = None,
                 virtualization: Virtualization | None = None,
                 probe_timeout: float = 15.0) -> None:
        self.host = host
        self.uri = uri or host.libvirt_uri
        self._virtualization = virtualization
        self._probe_timeout = probe_timeout
        self._conn: libvirt.virConnect | None = None
        self._conn_lock = threading.Lock()
        if self.uri.startswith("test:") and virtualization is None:
            self._virtualization = Virtualization("test", "libvirt's test driver: nothing runs")

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        """The driver's connection, reopened when libvirtd restarted under it."""
        with self._conn_lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
            self._conn = open_connection(self.uri)
            return self._conn

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    def _lookup(self, uuid: str) -> libvirt.virDomain | None:
        """This host's domain of the instance, or None; refuses a name taken by another uuid."""
        name = domain_name(self.host, uuid)
        try:
            dom = self._connection().lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(f"cannot look up domain {name}: {describe(err)}") from err
        owner = berth_uuid(self.host, name, dom.UUIDString())
        if owner != uuid:
            raise DriverError(f"domain {name} belongs to instance {owner}, not {uuid}")
        return dom

    def _require(self, uuid: str) -> libvirt.virDomain:
        dom = self._lookup(uuid)
        if dom is None:
            raise InstanceNotFound(f"instance {uuid} does not exist on host {self.host.name}")
        return dom

    def virtualization(self) -> Virtualization:
        """KVM or TCG for this host's domains, and why (cached; see capabilities.py)."""
        if self._virtualization is None:
            probe = self.host.image_dir / PROBE_IMAGE
            if not (probe / "metadata.json").exists():
                # Not cached: once the tiny image is built the real check runs.
                return Virtualization("qemu", "TCG (software emulation): KVM not checked yet, "
                                              f"the probe image {PROBE_IMAGE!r} is not built")
            self._virtualization = detect_virtualization(
                self.uri, VmImage.load(probe), self.host.state_dir / "virtualization.json",
                timeout=self._probe_timeout, probe_name=f"berth-{self.host.name}-kvm-probe")
        return self._virtualization

    def _define(self, spec: InstanceSpec, image: VmImage, files: InstanceFiles) -> libvirt.virDomain:
        xml = domain_xml(spec, self.host, image, files,
                         domain_type=self.virtualization().domain_type)
        with libvirt_errors(f"cannot define the VM {spec.hostname}"):
            return self._connection().defineXML(xml)

    def _boot(self, dom: libvirt.virDomain, before_resume: BeforeResume | None) -> None:
        """Start paused, let the caller attach its console, then run."""
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_PAUSED:
            pass
        elif dom.isActive():
            return
        else:
            with libvirt_errors(f"cannot start {dom.name()}"):
                try:
                    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                except libvirt.libvirtError as err:
                    if err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                        raise
                    dom.create()  # libvirt's test driver cannot start paused
                    dom.suspend()
        try:
            if before_resume is not None:
                before_resume()
        finally:
            with libvirt_errors(f"cannot resume {dom.name()}"):
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()

    def _wait_inactive(self, dom: libvirt.virDomain, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not dom.isActive():
                    return True
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return True
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def _force_off(self, dom: libvirt.virDomain) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if err.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID,
                                            libvirt.VIR_ERR_NO_DOMAIN):
                raise DriverError(f"cannot power off {dom.name()}: {describe(err)}") from err

    # -- Driver protocol --------------------------------------------------------------------

    def prepare_host(self) -> None:
        """Daemons up, state dir usable by QEMU, the bridge present, KVM-or-TCG decided."""
        if self.uri.startswith("test:"):
            return
        if self.uri.startswith("qemu:///"):
            ensure_daemons()
            ensure_bridge(self.host)
        (self.host.state_dir / "vms").mkdir(parents=True, exist_ok=True)
        for d in (self.host.state_dir, self.host.state_dir / "vms"):
            d.chmod(d.stat().st_mode | 0o711)
        ensure_traversable(self.host.state_dir / "vms")
        ensure_traversable(self.host.image_dir)
        self.virtualization()

    def create(self, spec: InstanceSpec, *, before_resume: BeforeResume | None = None
               ) -> InstanceStatus:
        validate(spec)
        dom = self._lookup(spec.uuid)
        if dom is not None:  # a retry after a crash, or a second delivery of the task
            self._boot(dom, before_resume)
            return self.status(spec.uuid)
        files = InstanceFiles.of(self.host, spec.uuid)
        try:
            image = VmImage.for_spec(self.host, spec.image)
            make_instance_dir(files, for_local_qemu=self.uri.startswith("qemu:///"))
            create_overlay(files, image, spec.disk_gib)
            if not image.is_installer:
                create_config_disk(files, spec, config_id=f"{spec.uuid}-{secrets.token_hex(4)}")
            dom = self._define(spec, image, files)
            self._boot(dom, before_resume)
        except BaseException:
            self._remove(spec.uuid, files)
            raise
        return self.status(spec.uuid)

    def start(self, spec: InstanceSpec, *, before_resume: BeforeResume | None = None
              ) -> InstanceStatus:
        self._boot(self._require(spec.uuid), before_resume)
        return self.status(spec.uuid)

    def stop(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus:
        dom = self._require(spec.uuid)
        if not dom.isActive():
            return self.status(spec.uuid)
        detail = "guest shut down after the ACPI power button"
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            detail = "paused domain powered off"
            self._force_off(dom)
        else:
            try:
                self._press_power_button(dom)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # already off
                    raise DriverError(f"cannot shut down {dom.name()}: {describe(err)}") from err
            if not self._wait_inactive(dom, timeout):
                self._force_off(dom)
                detail = f"forced off: the guest did not shut down within {timeout:g} s"
        self._wait_inactive(dom, 5.0)
        status = self.status(spec.uuid)
        return InstanceStatus(status.uuid, status.state, status.pid, detail)

    @staticmethod
    def _press_power_button(dom: libvirt.virDomain) -> None:
        try:
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
            dom.shutdown()  # libvirt's test driver knows no shutdown methods

    def reboot(self, spec: InstanceSpec, *, timeout: float = 10.0) -> InstanceStatus:
        dom = self._require(spec.uuid)
        if not dom.isActive():
            return self.start(spec)
        rebooted = threading.Event()
        conn = self._connection()
        cb_id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, lambda *_: rebooted.set(), None)
        try:
            # ACPI: libvirt turns the guest's power-off into a reset ("fake reboot").
            with libvirt_errors(f"cannot reboot {dom.name()}"):
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
            detail = "guest rebooted after the ACPI power button"
            if not rebooted.wait(timeout):
                with libvirt_errors(f"cannot reset {dom.name()}"):
                    dom.reset(0)
                detail = f"reset: the guest did not reboot within {timeout:g} s"
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cb_id)
        status = self.status(spec.uuid)
        return InstanceStatus(status.uuid, status.state, status.pid, detail)

    def destroy(self, spec: InstanceSpec) -> None:
        self._remove(spec.uuid, InstanceFiles.of(self.host, spec.uuid))

    def _remove(self, uuid: str, files: InstanceFiles) -> None:
        dom = self._lookup(uuid)
        if dom is not None:
            self._force_off(dom)
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    pass
                elif err.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                              libvirt.VIR_ERR_INVALID_ARG):
                    with libvirt_errors(f"cannot undefine {dom.name()}"):
                        dom.undefine()
                else:
                    raise DriverError(f"cannot undefine {dom.name()}: {describe(err)}") from err
        remove_instance_dir(files)

    def change_plan(self, spec: InstanceSpec) -> InstanceStatus:
        """vCPUs and memory: saved now, in effect from the next start; disk grows live."""
        validate(spec)
        dom = self._require(spec.uuid)
        files = InstanceFiles.of(self.host, spec.uuid)
        old = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        old_vcpus = int(old.findtext("vcpu") or 0)
        old_mib = int(old.findtext("memory") or 0) // 1024  # libvirt reports KiB
        active = bool(dom.isActive())
        image = VmImage.for_spec(self.host, spec.image)
        self._define(spec, image, files)
        notes = []
        if (old_vcpus, old_mib) != (spec.vcpus, spec.memory_mib):
            change = f"{old_vcpus}→{spec.vcpus} vCPU, {old_mib}→{spec.memory_mib} MiB"
            notes.append(f"{change}: takes effect at the next stop and start" if active
                         else f"{change}: saved")
        if active:
            with libvirt_errors(f"cannot grow the disk of {dom.name()}"):
                capacity = dom.blockInfo("vda")[0]
                if spec.disk_gib * GIB < capacity:
                    raise DriverError(f"cannot shrink the disk from {capacity // GIB} GiB "
                                      f"to {spec.disk_gib} GiB")
                if spec.disk_gib * GIB > capacity:
                    dom.blockResize("vda", spec.disk_gib * GIB,
                                    libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    notes.append(f"disk grown to {spec.disk_gib} GiB live")
        elif files.overlay.exists() and grow_overlay(files, spec.disk_gib):
            notes.append(f"disk grown to {spec.disk_gib} GiB")
        status = self.status(spec.uuid)
        return InstanceStatus(status.uuid, status.state, status.pid,
                              "; ".join(notes) or "plan unchanged")

    def rebuild(self, spec: InstanceSpec, *, before_resume: BeforeResume | None = None
                ) -> InstanceStatus:
        """A fresh disk from the image (same name, uuid, MAC and address), then boot."""
        validate(spec)
        dom = self._lookup(spec.uuid)
        if dom is None:
            return self.create(spec, before_resume=before_resume)
        self._force_off(dom)
        self._wait_inactive(dom, 5.0)
        files = InstanceFiles.of(self.host, spec.uuid)
        image = VmImage.for_spec(self.host, spec.image)
        make_instance_dir(files, for_local_qemu=self.uri.startswith("qemu:///"))
        create_overlay(files, image, spec.disk_gib)
        if image.is_installer:  # a fresh empty disk: the installer runs again from the ISO
            files.iso_ejected.unlink(missing_ok=True)
        else:
            create_config_disk(files, spec, config_id=f"{spec.uuid}-{secrets.token_hex(4)}")
        self._boot(self._define(spec, image, files), before_resume)
        return self.status(spec.uuid)

    def eject_iso(self, spec: InstanceSpec) -> InstanceStatus:
        """Take an installer ISO out of the VM's CD-ROM, now and for every later boot (a running
        installer sees the tray open). A no-op for a VM without one, or already ejected."""
        dom = self._require(spec.uuid)
        files = InstanceFiles.of(self.host, spec.uuid)
        with libvirt_errors(f"cannot read the definition of {dom.name()}", uuid=spec.uuid):
            xml = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        cdrom = next((disk for disk in xml.iterfind("devices/disk[@device='cdrom']")
                      if disk.find(f"target[@dev='{CDROM_DEV}']") is not None), None)
        if cdrom is None:
            status = self.status(spec.uuid)
            return InstanceStatus(status.uuid, status.state, status.pid, "no installer CD-ROM")
        files.iso_ejected.touch()
        source = cdrom.find("source")
        if source is None or not source.get("file"):
            status = self.status(spec.uuid)
            return InstanceStatus(status.uuid, status.state, status.pid, "ISO already ejected")
        cdrom.remove(source)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():  # forced: a guest that mounted the disc has locked the tray
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
        with libvirt_errors(f"cannot eject the ISO of {dom.name()}", uuid=spec.uuid):
            dom.updateDeviceFlags(ET.tostring(cdrom, encoding="unicode"), flags)
        status = self.status(spec.uuid)
        return InstanceStatus(status.uuid, status.state, status.pid, "ISO ejected")

    def status(self, uuid: str) -> InstanceStatus:
        dom = self._lookup(check_uuid(uuid))
        if dom is None:
            return InstanceStatus(uuid, PowerState.ABSENT)
        try:
            state, _reason = dom.state()
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return InstanceStatus(uuid, PowerState.ABSENT)
            raise DriverError(f"cannot read the state of {dom.name()}: {describe(err)}") from err
        if state in _RUNNING_STATES:
            return InstanceStatus(uuid, PowerState.RUNNING, self._qemu_pid(dom.name()),
                                  _RUNNING_STATES[state])
        detail = "crashed" if state == libvirt.VIR_DOMAIN_CRASHED else "shut off"
        return InstanceStatus(uuid, PowerState.STOPPED, None, detail)

    def _qemu_pid(self, name: str) -> int | None:
        if self.uri != "qemu:///system":
            return None
        try:
            return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def list_instances(self) -> list[InstanceStatus]:
        with libvirt_errors("cannot list domains"):
            domains = self._connection().listAllDomains(0)
        found = []
        for dom in domains:
            try:
                if not owns_domain_name(self.host, dom.name()) or not self._owned(dom):
                    continue
                found.append(self.status(berth_uuid(self.host, dom.name(), dom.UUIDString())))
            except libvirt.libvirtError:
                continue  # undefined while we were listing
        return found

    def _owned(self, dom: libvirt.virDomain) -> bool:
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
        except libvirt.libvirtError:
            return False
        return ET.fromstring(meta).findtext("host") == self.host.name

    def stats(self, uuid: str) -> InstanceStats:
        dom = self._require(uuid)
        files = InstanceFiles.of(self.host, uuid)
        disk_used = files.overlay.stat().st_blocks * 512 if files.overlay.exists() else 0
        if not dom.isActive():
            return InstanceStats(uuid, 0.0, 0, 0, 0, disk_used)
        with libvirt_errors(f"cannot read the counters of {dom.name()}", uuid=uuid):
            cpu_ns = dom.info()[4]
            mem = dom.memoryStats()
            rx = tx = 0
            for target in ET.fromstring(dom.XMLDesc()).iterfind("devices/interface/target"):
                counters = dom.interfaceStats(target.get("dev"))
                rx, tx = rx + counters[0], tx + counters[4]
            with contextlib.suppress(libvirt.libvirtError):
                disk_used = dom.blockInfo("vda")[1]
        memory = mem.get("rss") or mem.get("actual") or 0  # KiB; rss = what the host pays
        return InstanceStats(uuid, cpu_ns / 1e9, memory * 1024, rx, tx, disk_used)

    def configured(self, uuid: str) -> dict[str, int]:
        """vCPUs and memory the domain is defined with (what its next boot gets): the panel
        compares them with the plan to notice a domain edited behind Berth's back."""
        dom = self._require(uuid)
        with libvirt_errors(f"cannot read the definition of {dom.name()}", uuid=uuid):
            xml = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return {"vcpus": int(xml.findtext("vcpu") or 0),
                "memory_mib": int(xml.findtext("memory") or 0) // 1024}  # libvirt says KiB

    def console(self, uuid: str) -> ConsoleEndpoint:
        return ConsoleEndpoint("libvirt", domain_name(self.host, uuid))

    def vnc_port(self, uuid: str) -> int | None:
        """The running domain's VNC port on 127.0.0.1 (for the panel's proxy), else None."""
        dom = self._lookup(uuid)
        if dom is None or not dom.isActive():
            return None
        graphics = ET.fromstring(dom.XMLDesc()).find("devices/graphics[@type='vnc']")
        port = int(graphics.get("port", "-1")) if graphics is not None else -1
        return port if port > 0 else None

    def console_end(self, uuid: str) -> int:
        """Offset just past the last byte of console output kept so far."""
        log = SerialLog(InstanceFiles.of(self.host, uuid).serial_log)
        log.open()
        try:
            return log.end
        finally:
            log.close()

    async def open_console(self, uuid: str, *, from_offset: int = 0) -> LibvirtConsoleSession:
        """Attach to the serial console; read() replays the log from ``from_offset`` first.

        A stopped VM's session replays what its log holds and then ends.
        """
        import asyncio

        return await asyncio.to_thread(self._open_console, uuid, from_offset)

    def _open_console(self, uuid: str, from_offset: int) -> LibvirtConsoleSession:
        dom = self._require(uuid)
        session = LibvirtConsoleSession(
            SerialLog(InstanceFiles.of(self.host, uuid).serial_log), from_offset)
        if dom.isActive():
            conn = open_connection(self.uri)
            try:
                session.attach(conn, conn.lookupByUUIDString(libvirt_uuid(self.host, uuid)))
            except BaseException:
                conn.close()
                raise
        return session


_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def ensure_bridge(host: HostConfig) -> None:
    """The host bridge with the gateway address, up (shared with the container driver)."""
    from pyroute2 import IPRoute

    if not _BRIDGE_RE.match(host.bridge):
        raise DriverError(f"invalid bridge name {host.bridge!r}")
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=host.bridge)
        if not links:
            ipr.link("add", ifname=host.bridge, kind="bridge")
            links = ipr.link_lookup(ifname=host.bridge)
        index = links[0]
        addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if host.gateway and host.gateway not in addresses:
            with contextlib.suppress(Exception):  # raced with the container driver: fine
                ipr.addr("add", index=index, address=host.gateway, prefixlen=host.prefixlen)
        ipr.link("set", index=index, state="up")
