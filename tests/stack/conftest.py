"""The real thing, started for the tests: uvicorn (ASGI), the panel worker, and a throwaway
host (its own name, bridge, subnet, state dir, uid range) with its host worker and agent.

The processes share the test database (PostgreSQL) and Redis database 1 with the tests. Tests
that use the stack need ``transactional_db`` so what they write is visible to the processes.
Everything the host made is swept when the session ends.

The host also runs VMs: its image dir gets the ``tiny`` VM image (copied from the VM tests'
cache) and its state dir the KVM-or-TCG verdict those tests cached, so the agent reports
``vms`` at its first heartbeats instead of after a 17 s probe boot (it probes when none is
cached). ``stack.seed()`` makes a ``vm`` plan and the ``tiny`` image row too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from panel.catalog.models import Image, Plan
from panel.hosts.models import Host
from panel.hosts.services import register_host
from tests.stack import launcher
from workers.drivers.base import InstanceSpec

# Tests and tools import these from here; they live in the launcher.
VENV_BIN = launcher.VENV_BIN
free_port = launcher.free_port


class Stack(launcher.Stack):
    """The launcher's stack, with the rows its tests need."""

    def seed(self) -> dict:
        """Rows a stack test needs (the test database is flushed after every test)."""
        host = register_host(
            name=self.host_name,
            network=self.network,
            bridge=self.host_env["BERTH_BRIDGE"],
            state_dir=self.host_env["BERTH_STATE_DIR"],
            uid_base=int(self.host_env["BERTH_UID_BASE"]),
        )
        Host.objects.filter(pk=host.pk).update(
            status=Host.Status.ONLINE, last_heartbeat=timezone.now(), cpus=8, memory_mib=16384,
            disk_gib=100, supports_containers=True,
        )
        plan = Plan.objects.create(name="ct-test", kind="container", vcpus=1, memory_mib=256, disk_gib=1)
        image = Image.objects.create(name="busybox", kind="container", path="busybox")
        vm_plan = Plan.objects.create(name="vm-test", kind="vm", vcpus=1, memory_mib=256, disk_gib=1)
        tiny_meta = self.image_dir / "tiny" / "metadata.json"
        tiny = json.loads(tiny_meta.read_text()) if tiny_meta.exists() else {}
        vm_image = Image.objects.create(name="tiny", kind="vm", path="tiny",
                                        checksum=tiny.get("checksum", ""),
                                        size_bytes=tiny.get("size_bytes", 0))
        return {"host": Host.objects.get(pk=host.pk), "plan": plan, "image": image,
                "vm_plan": vm_plan, "vm_image": vm_image}

    def wait_for_vms(self, timeout: float = 60) -> Host:
        """Block until the agent's heartbeat says the host runs VMs (its KVM/TCG check is done)."""
        failed = self.image_dir / "tiny-failed.txt"
        if failed.exists():
            raise RuntimeError(f"the tiny VM image could not be prepared: {failed.read_text()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host = Host.objects.get(name=self.host_name)
            if host.supports_vms and host.virt_type:
                return host
            time.sleep(0.2)
        raise RuntimeError(f"host {self.host_name} never reported VMs:\n{self.all_logs()}")


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker):
    with running_stack() as running:
        yield running


@contextlib.contextmanager
def running_stack(*, redis_url: str | None = None, database_url: str | None = None,
                  beat: bool = False, panel_env: dict[str, str] | None = None):
    """Start a stack; by default on the tests' own Redis and database. Fault tests give it a
    Redis of their own (to restart it) or a database URL through a proxy (to cut it), and
    ``beat`` for the periodic tasks (expiring heartbeats, reaping, reconciling)."""
    db = connection.settings_dict
    with launcher.launch(
        database_url=database_url or f"postgres://{db['USER']}@{db['HOST']}/{db['NAME']}",
        redis_url=redis_url or settings.REDIS_URL, secret_key=settings.SECRET_KEY,
        prepare=_prepare_images, sweep=sweep_host, stack_class=Stack, beat=beat, panel_env=panel_env,
    ) as stack:
        yield stack


def _prepare_images(image_dir: Path, state_dir: Path) -> None:
    from workers.images.busybox import build_busybox

    build_busybox(image_dir, lambda _: None)
    try:
        _add_vm_image(image_dir, state_dir)
    except Exception as exc:  # container tests go on; VM tests fail in wait_for_vms, saying why
        (image_dir / "tiny-failed.txt").write_text(f"{exc.__class__.__name__}: {exc}\n")


def _add_vm_image(image_dir: Path, state_dir: Path) -> None:
    """The tiny VM image (built once into the VM tests' cache, ~65 MB copied) and the cached
    KVM-or-TCG verdict; QEMU (libvirt-qemu) must traverse every directory down to them."""
    from tests.workers.drivers.vm_fixtures import IMAGE_DIR, TEST_ROOT, _mkdir_searchable
    from workers.drivers.vm.daemons import ensure_daemons
    from workers.images.vm_tiny import build_vm_tiny

    ensure_daemons()
    _mkdir_searchable(TEST_ROOT)
    _mkdir_searchable(IMAGE_DIR)
    built = build_vm_tiny(IMAGE_DIR, lambda _: None)
    shutil.copytree(built.path, image_dir / "tiny", copy_function=shutil.copyfile)
    (image_dir / "tiny").chmod(0o755)
    image_dir.chmod(0o755)
    state_dir.mkdir(mode=0o711)
    verdict = TEST_ROOT / "virtualization.json"
    if verdict.exists():
        shutil.copyfile(verdict, state_dir / "virtualization.json")


@pytest.fixture(autouse=True)
def _fresh_host(request):
    """Each stack test starts on an empty host: the database is flushed after every test, so
    containers a failed test left behind would hold addresses and uid ranges the panel reuses."""
    yield
    if "stack" in request.fixturenames:
        destroy_instances(request.getfixturevalue("stack"))


def destroy_instances(stack: Stack) -> None:
    launcher.destroy_containers(stack)
    vms = stack.host_driver("vm")
    for status in vms.list_instances():
        try:  # destroy() needs only the uuid: domain, overlay, config disk, serial log
            vms.destroy(_vm_spec(status.uuid))
        except Exception as exc:
            print(f"sweep: VM {status.uuid}: {exc}")


def _vm_spec(uuid: str) -> InstanceSpec:
    return InstanceSpec.from_dict({
        "uuid": uuid, "kind": "vm", "hostname": "sweep", "vcpus": 1, "memory_mib": 64,
        "disk_gib": 1, "image": {"name": "tiny", "path": "tiny"},
        "network": {"address": "0.0.0.0", "prefixlen": 24, "gateway": "", "mac": "", "bridge": ""},
    })


def sweep_host(stack: Stack) -> None:
    """Destroy whatever the test host still has, then remove its bridge and cgroups."""
    destroy_instances(stack)
    stack.host_driver("container").teardown_host()
