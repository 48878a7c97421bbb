"""VMs from an installer ISO (issue 11), against real libvirt: the ISO is checked and kept in the
store; the VM boots it from a CD-ROM with an empty disk and its serial console answers; once a
boot loader is on the disk the VM boots from the disk (ISO still inserted, then ejected)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.workers.drivers.iso_fixtures import (
    DISK_BOOT_MESSAGE,
    ISO_PROMPT,
    ISO_READY,
    build_bootable_iso,
    build_data_iso,
    build_uefi_only_iso,
    install_boot_sector_command,
)
from tests.workers.drivers.vm_fixtures import (
    IMAGE_DIR,
    TEST_ROOT,
    libvirt_daemons,
    make_spec,
    read_until,
    virtualization,
    vm_bridge,
    vm_driver,
    vm_host,
    vm_tiny_image,
)
from workers.drivers.base import HostConfig, PowerState
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.naming import domain_name
from workers.drivers.vm.storage import InstanceFiles
from workers.drivers.vm.xml import domain_xml
from workers.images.iso import ISO_DIR, IsoError, inspect_iso, store_iso

_FIXTURES = (libvirt_daemons, virtualization, vm_bridge, vm_driver, vm_host, vm_tiny_image)

pytestmark = pytest.mark.vm

BOOT = 120.0  # isolinux + a compressed kernel under TCG on shared cores


@pytest.fixture(scope="session")
def iso_work(vm_tiny_image):
    work = TEST_ROOT / f"iso-{secrets.token_hex(3)}"
    work.mkdir(parents=True)
    work.chmod(0o755)
    yield work
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def bootable_iso(iso_work: Path, vm_tiny_image) -> Path:
    return build_bootable_iso(iso_work / "installer.iso", IMAGE_DIR, vm_tiny_image.path / "initrd.img")


@pytest.fixture(scope="session")
def stored_iso(bootable_iso: Path):
    stored = store_iso(bootable_iso, IMAGE_DIR, name="test-installer")
    yield stored
    shutil.rmtree(stored.path, ignore_errors=True)
    with contextlib.suppress(OSError):  # the store's iso/ dir, unless someone else uses it now
        (IMAGE_DIR / ISO_DIR).rmdir()


def _store_entries() -> set[str]:
    root = IMAGE_DIR / ISO_DIR
    return {p.name for p in root.iterdir()} if root.exists() else set()


# -- checking and storing -------------------------------------------------------------------

def test_inspect_accepts_a_bios_bootable_iso(bootable_iso):
    info = inspect_iso(bootable_iso)
    assert info.volume_id == "BERTHTEST" and info.boot_platforms == ("BIOS",)


def test_store_keeps_a_checked_copy_and_reuses_it(bootable_iso, stored_iso):
    digest = subprocess.run(["sha256sum", str(bootable_iso)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    assert stored_iso.checksum == f"sha256:{digest}"
    assert stored_iso.path == IMAGE_DIR / ISO_DIR / digest
    image = VmImage.load(stored_iso.path)
    assert image.is_installer and image.iso.read_bytes() == bootable_iso.read_bytes()
    assert image.kernel is None and image.checksum == stored_iso.checksum
    again = store_iso(bootable_iso, IMAGE_DIR, name="other", expected_sha256=f"sha256:{digest.upper()}")
    assert again.reused and again.path == stored_iso.path
    assert not [n for n in _store_entries() if n.endswith(".tmp")]


@pytest.mark.parametrize("case", ["not-iso", "data-iso", "uefi-only", "bad-sha", "bad-sha-format"])
def test_refused_isos_leave_nothing_in_the_store(case, iso_work, bootable_iso, tmp_path):
    expected = ""
    if case == "not-iso":
        source = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "64M"], check=True)
        message = "not an ISO file"
    elif case == "data-iso":
        source = build_data_iso(tmp_path / "data.iso")
        message = "no El Torito boot record"
    elif case == "uefi-only":
        source = build_uefi_only_iso(tmp_path / "uefi.iso")
        message = "no bootable El Torito entry for BIOS (bootable entries: UEFI)"
    elif case == "bad-sha":
        source, expected = bootable_iso, "0" * 64
        message = "Checksum mismatch: the file's sha256 is"
    else:
        source, expected = bootable_iso, "abc"
        message = "64 hexadecimal digits"
    before = _store_entries()
    with pytest.raises(IsoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store_iso(source, IMAGE_DIR, name="refused", expected_sha256=expected)
    assert _store_entries() == before


# -- the domain -----------------------------------------------------------------------------

def test_domain_xml_boots_disk_then_cdrom_without_kernel_or_config_disk(stored_iso, tmp_path):
    host = HostConfig(name="tx", state_dir=tmp_path, image_dir=IMAGE_DIR, bridge="br0",
                      gateway="10.0.0.1", prefixlen=24)
    spec = make_spec(host, image="test-installer", image_path=str(stored_iso.path))
    files = InstanceFiles.of(host, spec.uuid)
    dom = ET.fromstring(domain_xml(spec, host, VmImage.load(stored_iso.path), files,
                                   domain_type="qemu"))
    assert dom.find("os/kernel") is None and dom.find("os/cmdline") is None
    disks = {d.find("target").get("dev"): d for d in dom.iterfind("devices/disk")}
    assert set(disks) == {"vda", "hdc"}  # no config disk
    assert disks["vda"].find("boot").get("order") == "1"
    cdrom = disks["hdc"]
    assert cdrom.get("device") == "cdrom" and cdrom.find("readonly") is not None
    assert cdrom.find("source").get("file") == str(stored_iso.path / "installer.iso")
    assert cdrom.find("boot").get("order") == "2"


def _inactive_cdrom_source(driver, uuid: str) -> str | None:
    dom = driver._require(uuid)
    xml = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    source = xml.find("devices/disk[@device='cdrom']/source")
    return None if source is None else source.get("file")


async def test_boots_the_installer_then_its_disk_and_ejects(vm_driver, vm_host, stored_iso):
    spec = make_spec(vm_host, image="test-installer", image_path=str(stored_iso.path))
    files = InstanceFiles.of(vm_host, spec.uuid)
    sessions = []
    loop = asyncio.get_running_loop()

    def attach() -> None:
        sessions.append(asyncio.run_coroutine_threadsafe(
            vm_driver.open_console(spec.uuid), loop).result(30))

    try:
        status = await asyncio.to_thread(vm_driver.create, spec, before_resume=attach)
        assert status.state is PowerState.RUNNING
        assert not files.config_disk.exists()
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(files.overlay)],
                              capture_output=True, text=True, check=True).stdout
        assert '"virtual-size": 1073741824' in info and "backing-filename" not in info
        (session,) = sessions

        # The empty disk has no boot signature: SeaBIOS goes on to the CD-ROM, isolinux boots
        # the ISO's kernel with the ISO's command line, and the serial console answers.
        out = await read_until(session, ISO_PROMPT, BOOT)
        assert ISO_READY in out
        await session.write(b"echo SUM-$((40+2)); cat /sys/block/vda/size\n")
        out = await read_until(session, b"SUM-42", 30)
        out = await read_until(session, b"2097152", 30, bytearray(out))  # 1 GiB in sectors

        # "Install": a boot loader on the disk. With the ISO still in, the next boot is from
        # the disk (first in the boot order).
        await session.write(install_boot_sector_command())
        await read_until(session, b"INSTALLED-42", 30)
        mark = vm_driver.console_end(spec.uuid)
        await session.write(b"reboot -f\n")
        out = await read_until(session, DISK_BOOT_MESSAGE, BOOT)
        assert ISO_READY not in out
        assert _inactive_cdrom_source(vm_driver, spec.uuid) == str(stored_iso.path / "installer.iso")

        # Eject while running: the definition keeps an empty CD-ROM for later boots too.
        status = await asyncio.to_thread(vm_driver.eject_iso, spec)
        assert status.detail == "ISO ejected" and status.state is PowerState.RUNNING
        assert _inactive_cdrom_source(vm_driver, spec.uuid) is None
        live = ET.fromstring(vm_driver._require(spec.uuid).XMLDesc(0))
        live_source = live.find("devices/disk[@device='cdrom']/source")
        assert live_source is None or live_source.get("file") is None  # libvirt: <source index=…/>
        assert (await asyncio.to_thread(vm_driver.eject_iso, spec)).detail == "ISO already ejected"
        await session.close()
        sessions.clear()

        # The boot sector halts: the ACPI button goes unanswered and the stop forces it off.
        status = await asyncio.to_thread(vm_driver.stop, spec, timeout=3)
        assert status.state is PowerState.STOPPED
        # A plan change redefines the domain: the ISO stays ejected.
        await asyncio.to_thread(vm_driver.change_plan, spec)
        assert _inactive_cdrom_source(vm_driver, spec.uuid) is None
        mark = vm_driver.console_end(spec.uuid)
        await asyncio.to_thread(vm_driver.start, spec)
        session = await vm_driver.open_console(spec.uuid, from_offset=mark)
        sessions.append(session)
        out = await read_until(session, DISK_BOOT_MESSAGE, BOOT)
        assert ISO_READY not in out
    finally:
        for s in sessions:
            await s.close()
    await asyncio.to_thread(vm_driver.destroy, spec)
    assert vm_driver.status(spec.uuid).state is PowerState.ABSENT
    assert not files.dir.exists()
    assert stored_iso.path.joinpath("installer.iso").exists()  # the image stays in the store


async def test_rebuild_gives_a_fresh_empty_disk_and_the_iso_back(vm_driver, vm_host, stored_iso):
    spec = make_spec(vm_host, image="test-installer", image_path=str(stored_iso.path))
    files = InstanceFiles.of(vm_host, spec.uuid)
    await asyncio.to_thread(vm_driver.create, spec)
    await asyncio.to_thread(vm_driver.eject_iso, spec)
    assert files.iso_ejected.exists()
    await asyncio.to_thread(vm_driver.rebuild, spec)
    assert _inactive_cdrom_source(vm_driver, spec.uuid) == str(stored_iso.path / "installer.iso")
    session = await vm_driver.open_console(spec.uuid)
    try:
        await read_until(session, ISO_PROMPT, BOOT)
    finally:
        await session.close()
    await asyncio.to_thread(vm_driver.destroy, spec)
    assert domain_name(vm_host, spec.uuid) not in subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
        text=True, check=True).stdout


async def test_an_installed_disk_copies_to_another_vm_that_boots_from_it(vm_driver, vm_host,
                                                                       stored_iso, tmp_path):
    """Backups and moves (export_disk / install_disk) of an ISO VM: a standalone disk, no
    backing image to rebase onto; the copy boots what was installed."""
    from workers.drivers.vm.snapshots import VmSnapshots

    store = VmSnapshots(vm_driver)
    spec = make_spec(vm_host, image="test-installer", image_path=str(stored_iso.path))
    await asyncio.to_thread(vm_driver.create, spec)
    session = await vm_driver.open_console(spec.uuid)
    try:
        await read_until(session, ISO_PROMPT, BOOT)
        await session.write(install_boot_sector_command())
        await read_until(session, b"INSTALLED-42", 30)
    finally:
        await session.close()
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    disk = await asyncio.to_thread(store.export_disk, spec, out_dir)
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                          capture_output=True, text=True, check=True).stdout
    assert "backing-filename" not in info and not (out_dir / "config.iso").exists()
    await asyncio.to_thread(vm_driver.destroy, spec)

    twin = make_spec(vm_host, image="test-installer", image_path=str(stored_iso.path),
                     address="10.253.7.11")
    loop = asyncio.get_running_loop()
    sessions = []

    def attach() -> None:
        sessions.append(asyncio.run_coroutine_threadsafe(
            vm_driver.open_console(twin.uuid), loop).result(30))

    try:
        status = await asyncio.to_thread(store.install_disk, twin, disk, start=True,
                                         before_resume=attach)
        assert status.state is PowerState.RUNNING
        assert not InstanceFiles.of(vm_host, twin.uuid).config_disk.exists()
        out = await read_until(sessions[0], DISK_BOOT_MESSAGE, BOOT)
        assert ISO_READY not in out
    finally:
        for s in sessions:
            await s.close()
    await asyncio.to_thread(vm_driver.destroy, twin)
