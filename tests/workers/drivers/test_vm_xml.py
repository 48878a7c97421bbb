"""Domain XML: valid against libvirt's schema, carries the plan, the identity and the address."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.workers.drivers.vm_fixtures import make_spec
from workers.drivers.base import DriverError, HostConfig
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.naming import METADATA_NS, berth_uuid, owns_domain_name
from workers.drivers.vm.storage import InstanceFiles
from workers.drivers.vm.xml import domain_xml


@pytest.fixture
def host(tmp_path: Path) -> HostConfig:
    return HostConfig(name="dev", state_dir=tmp_path / "state", image_dir=tmp_path / "images",
                      bridge="berth0", gateway="10.77.0.1", prefixlen=24)


@pytest.fixture
def image(host: HostConfig) -> VmImage:
    path = host.image_dir / "tiny"
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({
        "name": "tiny", "kind": "vm", "kernel": "vmlinux", "initrd": "initrd.img",
        "disk": "disk.qcow2", "disk_format": "qcow2", "cmdline": "console=ttyS0 quiet",
        "checksum": "sha256:abc"}))
    return VmImage.load(path)


def _xml(host, image, spec, domain_type="qemu") -> str:
    return domain_xml(spec, host, image, InstanceFiles.of(host, spec.uuid),
                      domain_type=domain_type)


def test_xml_validates_with_virt_xml_validate(host, image, tmp_path):
    spec = make_spec(host, vcpus=2, memory_mib=512)
    for domain_type in ("qemu", "kvm"):
        path = tmp_path / f"{domain_type}.xml"
        path.write_text(_xml(host, image, spec, domain_type))
        proc = subprocess.run(["virt-xml-validate", str(path), "domain"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr + proc.stdout


def test_xml_carries_plan_identity_network_and_devices(host, image):
    spec = make_spec(host, vcpus=2, memory_mib=512, address="10.77.0.9")
    root = ET.fromstring(_xml(host, image, spec, "kvm"))
    assert root.get("type") == "kvm"
    assert root.findtext("name") == f"berth-dev-{spec.uuid[:12]}"
    assert owns_domain_name(host, root.findtext("name"))
    assert berth_uuid(host, root.findtext("name"), root.findtext("uuid")) == spec.uuid
    meta = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert meta.findtext(f"{{{METADATA_NS}}}host") == "dev"
    assert meta.findtext(f"{{{METADATA_NS}}}uuid") == spec.uuid
    assert root.findtext("vcpu") == "2"
    assert root.find("memory").text == "512" and root.find("memory").get("unit") == "MiB"
    cmdline = root.findtext("os/cmdline")
    assert cmdline.startswith("console=ttyS0 quiet ")
    assert {"berth.ip=10.77.0.9/24", "berth.gw=10.77.0.1", f"berth.hostname={spec.hostname}"} \
        <= set(cmdline.split())
    files = InstanceFiles.of(host, spec.uuid)
    disks = root.findall("devices/disk")
    assert disks[0].find("source").get("file") == str(files.overlay)
    assert disks[0].find("target").get("bus") == "virtio"
    assert disks[1].find("readonly") is not None
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "berth0"
    assert nic.find("mac").get("address") == spec.network.mac
    assert nic.find("model").get("type") == "virtio"
    assert root.find("devices/serial/log").get("file") == str(files.serial_log)
    vnc = root.find("devices/graphics")
    assert (vnc.get("type"), vnc.get("listen"), vnc.get("autoport")) == ("vnc", "127.0.0.1", "yes")
    assert root.findtext("on_poweroff") == "destroy" and root.findtext("on_reboot") == "restart"
    assert root.find("cpu") is None  # never host-passthrough/host-model


@pytest.mark.parametrize("field,value", [
    ("hostname", "bad host"), ("hostname", "x; reboot"), ("vcpus", 0), ("memory_mib", 8),
])
def test_bad_specs_are_refused_with_the_field_named(host, image, field, value):
    spec = make_spec(host, **{field: value})
    with pytest.raises(DriverError, match="hostname|plan"):
        _xml(host, image, spec)


def test_bad_network_is_refused(host, image):
    spec = make_spec(host)
    bad = make_spec(host, network=type(spec.network)(
        address="10.77.0.300", prefixlen=24, gateway="10.77.0.1", mac=spec.network.mac,
        bridge="berth0"))
    with pytest.raises(DriverError, match="network"):
        _xml(host, image, bad)


def test_image_checksum_mismatch_is_refused(host, image):
    spec = make_spec(host)
    wrong = type(spec.image)(name="tiny", path="tiny", checksum="sha256:other")
    with pytest.raises(DriverError, match="rebuild the image"):
        VmImage.for_spec(host, wrong)
    with pytest.raises(DriverError, match="not built"):
        VmImage.for_spec(host, type(spec.image)(name="nope", path="nope"))


def test_domain_names_of_other_hosts_are_not_ours(host):
    assert owns_domain_name(host, "berth-dev-0123456789ab")
    assert not owns_domain_name(host, "berth-dev-2-0123456789ab")
    assert not owns_domain_name(host, "berth-dev-kvm-probe")
    assert not owns_domain_name(host, "berth-de-0123456789ab")
