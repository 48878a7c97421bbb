"""VmDriver against libvirt's test:///default driver: naming, ownership, idempotence, rollback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.workers.drivers.vm_fixtures import make_spec
from workers.drivers.base import DriverError, HostConfig, InstanceNotFound, PowerState
from workers.drivers.vm.driver import VmDriver
from workers.drivers.vm.storage import InstanceFiles

URI = "test:///default"


def _host(tmp_path: Path, name: str) -> HostConfig:
    return HostConfig(name=name, state_dir=tmp_path / name, image_dir=tmp_path / "images",
                      bridge="berth0", gateway="10.77.0.1", prefixlen=24, libvirt_uri=URI)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    path = tmp_path / "images" / "tiny"
    path.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path / "disk.qcow2"), "64M"],
                   check=True)
    (path / "metadata.json").write_text(json.dumps({
        "name": "tiny", "kind": "vm", "kernel": "vmlinux", "initrd": "initrd.img",
        "disk": "disk.qcow2", "disk_format": "qcow2", "cmdline": "console=ttyS0"}))
    return path


@pytest.fixture
def drivers(tmp_path: Path, images: Path):
    made = [VmDriver(_host(tmp_path, "dev")), VmDriver(_host(tmp_path, "dev-2"))]
    yield made
    for driver in made:
        for status in driver.list_instances():
            driver._remove(status.uuid, InstanceFiles.of(driver.host, status.uuid))
        driver.close()


def test_create_is_idempotent_and_files_are_laid_out(drivers):
    dev, _ = drivers
    spec = make_spec(dev.host)
    calls = []
    assert dev.create(spec, before_resume=lambda: calls.append(dev.status(spec.uuid).detail)
                      ).state is PowerState.RUNNING
    assert calls == ["paused"]  # the hook runs while the domain is paused
    assert dev.create(spec).state is PowerState.RUNNING
    files = InstanceFiles.of(dev.host, spec.uuid)
    assert files.overlay.exists() and files.config_disk.exists()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(files.overlay)],
                                     capture_output=True, check=True).stdout)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 1 << 30
    assert [s.uuid for s in dev.list_instances()] == [spec.uuid]


def test_hosts_sharing_libvirtd_never_see_each_others_domains(drivers):
    dev, dev2 = drivers
    a, b = make_spec(dev.host), make_spec(dev2.host)
    dev.create(a)
    dev2.create(b)
    assert [s.uuid for s in dev.list_instances()] == [a.uuid]
    assert [s.uuid for s in dev2.list_instances()] == [b.uuid]
    assert dev.status(b.uuid).state is PowerState.ABSENT
    dev.destroy(b)  # not ours: nothing happens to it
    assert dev2.status(b.uuid).state is PowerState.RUNNING


def test_one_instance_can_be_defined_on_two_hosts_of_one_libvirtd_while_it_moves(drivers):
    dev, dev2 = drivers
    spec = make_spec(dev.host)
    dev.create(spec)
    dev2.create(spec)  # the move's target defines its copy while the source's still exists
    assert [s.uuid for s in dev.list_instances()] == [spec.uuid]
    assert [s.uuid for s in dev2.list_instances()] == [spec.uuid]
    dev.destroy(spec)  # the source's cleanup leaves the target's copy alone
    assert dev.status(spec.uuid).state is PowerState.ABSENT
    assert dev2.status(spec.uuid).state is PowerState.RUNNING


def test_domain_uuids_are_per_host_and_lead_back_to_the_instance(tmp_path):
    from workers.drivers.vm.naming import berth_uuid, domain_name, libvirt_uuid

    a, b = _host(tmp_path, "a"), _host(tmp_path, "b")
    uuid = "0123456789abcdef0123456789abcdef"
    assert libvirt_uuid(a, uuid) != libvirt_uuid(b, uuid)
    for host in (a, b):
        assert berth_uuid(host, domain_name(host, uuid), libvirt_uuid(host, uuid)) == uuid
    # A domain defined before the per-host scheme carries the instance uuid itself.
    legacy = "01234567-89ab-cdef-0123-456789abcdef"
    assert berth_uuid(a, domain_name(a, uuid), legacy) == uuid


def test_stop_start_destroy_and_retries(drivers):
    dev, _ = drivers
    spec = make_spec(dev.host)
    dev.create(spec)
    assert dev.stop(spec, timeout=1).state is PowerState.STOPPED
    assert dev.stop(spec).state is PowerState.STOPPED
    assert dev.start(spec).state is PowerState.RUNNING
    assert dev.start(spec).state is PowerState.RUNNING
    dev.destroy(spec)
    dev.destroy(spec)
    assert dev.status(spec.uuid).state is PowerState.ABSENT
    assert not InstanceFiles.of(dev.host, spec.uuid).dir.exists()
    with pytest.raises(InstanceNotFound):
        dev.start(spec)


def test_failed_create_leaves_nothing_behind(drivers):
    dev, _ = drivers
    spec = make_spec(dev.host)
    with pytest.raises(DriverError, match="not built"):
        dev.create(make_spec(dev.host, uuid=spec.uuid, image="missing"))

    def hook_fails() -> None:
        raise RuntimeError("relay could not attach")

    with pytest.raises(RuntimeError):
        dev.create(spec, before_resume=hook_fails)
    assert dev.status(spec.uuid).state is PowerState.ABSENT
    assert not InstanceFiles.of(dev.host, spec.uuid).dir.exists()


def test_change_plan_on_a_stopped_vm_grows_the_disk(drivers):
    dev, _ = drivers
    spec = make_spec(dev.host)
    dev.create(spec)
    dev.stop(spec)
    bigger = make_spec(dev.host, uuid=spec.uuid, vcpus=2, memory_mib=512, disk_gib=3)
    detail = dev.change_plan(bigger).detail
    assert "1→2 vCPU, 256→512 MiB: saved" in detail and "disk grown to 3 GiB" in detail
    with pytest.raises(DriverError, match="shrink"):
        dev.change_plan(make_spec(dev.host, uuid=spec.uuid, disk_gib=1))


def test_invalid_uuid_is_refused(drivers):
    dev, _ = drivers
    with pytest.raises(DriverError, match="invalid instance uuid"):
        dev.status("../../etc")


def test_virtualization_on_the_test_driver_needs_no_probe(drivers):
    assert drivers[0].virtualization().domain_type == "test"
