"""libvirt domain XML for one Berth VM, built from its spec, its host and its image.

Values from the spec are validated here (they end up in the XML and on the guest's kernel
command line) and the document is built with ElementTree, so nothing is pasted into markup.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET

from workers.drivers.base import DriverError, HostConfig, InstanceSpec
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.naming import METADATA_NS, METADATA_PREFIX, domain_name, libvirt_uuid
from workers.drivers.vm.storage import InstanceFiles

_HOSTNAME_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.I)
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.I)
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
CDROM_DEV = "hdc"  # an installer ISO's CD-ROM (IDE: every installer and SeaBIOS know it)

ET.register_namespace(METADATA_PREFIX, METADATA_NS)


def validate(spec: InstanceSpec) -> None:
    """Refuse a spec the XML or the guest could misread, with a message saying which field."""
    if not _HOSTNAME_RE.match(spec.hostname) or len(spec.hostname) > 253:
        raise DriverError(f"invalid hostname {spec.hostname!r}")
    net = spec.network
    try:
        ipaddress.IPv4Interface(f"{net.address}/{net.prefixlen}")
        if net.gateway:
            ipaddress.IPv4Address(net.gateway)
    except ValueError as exc:
        raise DriverError(f"invalid network settings: {exc}") from exc
    if not _MAC_RE.match(net.mac):
        raise DriverError(f"invalid MAC address {net.mac!r}")
    if not _IFNAME_RE.match(net.bridge):
        raise DriverError(f"invalid bridge name {net.bridge!r}")
    if spec.vcpus < 1 or spec.memory_mib < 32 or spec.disk_gib < 1:
        raise DriverError(
            f"invalid plan: {spec.vcpus} vCPU, {spec.memory_mib} MiB, {spec.disk_gib} GiB"
        )


def kernel_cmdline(spec: InstanceSpec, image: VmImage) -> str:
    net = spec.network
    parts = [image.cmdline, f"berth.hostname={spec.hostname}",
             f"berth.ip={net.address}/{net.prefixlen}"]
    if net.gateway:
        parts.append(f"berth.gw={net.gateway}")
    return " ".join(parts)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def domain_xml(
    spec: InstanceSpec,
    host: HostConfig,
    image: VmImage,
    files: InstanceFiles,
    *,
    domain_type: str,
) -> str:
    """The persistent definition of the instance's domain."""
    validate(spec)
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", domain_name(host, spec.uuid))
    _sub(dom, "uuid", libvirt_uuid(host, spec.uuid))
    _sub(dom, "title", f"{spec.hostname} (Berth {host.name})")

    meta = _sub(dom, "metadata")
    inst = _sub(meta, f"{{{METADATA_NS}}}instance")
    _sub(inst, f"{{{METADATA_NS}}}host", host.name)
    _sub(inst, f"{{{METADATA_NS}}}uuid", spec.uuid)
    _sub(inst, f"{{{METADATA_NS}}}image", image.name)
    _sub(inst, f"{{{METADATA_NS}}}hostname", spec.hostname)

    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if not image.is_installer:
        _sub(os_el, "kernel", str(image.kernel))
        _sub(os_el, "initrd", str(image.initrd))
        _sub(os_el, "cmdline", kernel_cmdline(spec, image))

    features = _sub(dom, "features")
    _sub(features, "acpi")  # the power button is how a graceful stop reaches the guest
    _sub(features, "apic")
    # No <cpu> element: QEMU's default model. host-passthrough/host-model break on this kind of
    # nested KVM (QEMU dies on MSR 0x10a) and mean nothing under TCG.
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")  # stays defined: a stopped VM can be started again
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    dev = _sub(dom, "devices")
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=str(files.overlay))
    _sub(disk, "target", dev="vda", bus="virtio")

    if image.is_installer:
        # Boot order disk, then CD-ROM: SeaBIOS finds no boot signature on the empty disk and
        # goes on to the installer; once the installer has put a boot loader on the disk the
        # VM boots from it, ISO still inserted or ejected. No config disk: the installer asks.
        _sub(disk, "boot", order="1")
        cdrom = _sub(dev, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        if not files.iso_ejected.exists():
            _sub(cdrom, "source", file=str(image.iso))
        _sub(cdrom, "target", dev=CDROM_DEV, bus="ide")
        _sub(cdrom, "readonly")
        _sub(cdrom, "boot", order="2")
    else:
        cfg = _sub(dev, "disk", type="file", device="disk")
        _sub(cfg, "driver", name="qemu", type="raw")
        _sub(cfg, "source", file=str(files.config_disk))
        _sub(cfg, "target", dev="vdb", bus="virtio")
        _sub(cfg, "readonly")

    nic = _sub(dev, "interface", type="bridge")
    _sub(nic, "source", bridge=spec.network.bridge)
    _sub(nic, "mac", address=spec.network.mac.lower())
    _sub(nic, "model", type="virtio")

    serial = _sub(dev, "serial", type="pty")
    # virtlogd keeps every byte the guest printed, viewers or not: console replay reads it.
    _sub(serial, "log", file=str(files.serial_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port="0")

    graphics = _sub(dev, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    _sub(graphics, "listen", type="address", address="127.0.0.1")
    video = _sub(dev, "video")
    _sub(video, "model", type="vga", vram="16384", heads="1")

    balloon = _sub(dev, "memballoon", model="virtio")
    _sub(balloon, "stats", period="5")

    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")
