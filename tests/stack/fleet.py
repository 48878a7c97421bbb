"""A live fleet for the multi-host tests: the web server, the panel worker, beat (heartbeat
expiry) and two throwaway hosts, each with its own host worker, agent, name, state dir,
bridge, subnet, uid range and Redis ACL user — as on separate machines.

The panel runs with a short BERTH_HEARTBEAT_TIMEOUT so a silent host goes offline within
seconds. Hosts can be stopped and started again (``stop_agent``/``start_agent``) and new ones
started from the exact command the enrol page shows (``run_commands``). Everything the hosts
made is swept after each test and at the end; the ACL users are deleted.

Test modules import ``fleet_fixture`` and ``fresh_fleet_fixture`` and ask for ``fleet`` or
``fresh_fleet``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from panel.catalog.models import Image, Plan
from panel.hosts import credentials
from panel.hosts.models import Host
from panel.hosts.services import register_host
from tests.stack.launcher import free_port
from workers.config import load_host_settings
from workers.drivers.base import InstanceSpec
from workers.drivers.registry import get_driver

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
HEARTBEAT_TIMEOUT = 3  # seconds of silence before a host shows offline (beat checks every 10 s)
WORKER_FLAGS = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--concurrency", "2"]


@dataclass
class FleetHost:
    env: dict[str, str]
    network: str
    secret: str

    @property
    def name(self) -> str:
        return self.env["BERTH_HOST_NAME"]

    def driver(self, kind: str = "container"):
        return get_driver(kind, load_host_settings(self.env).host)


@dataclass
class Fleet:
    url: str
    root: Path
    image_dir: Path
    panel_env: dict[str, str]
    hosts: list[FleetHost] = field(default_factory=list)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # pool children left in the group
            os.killpg(proc.pid, signal.SIGKILL)

    def logs(self, tail: int = 40) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {path.stem} ---\n" + "\n".join(lines))
        return "\n".join(out)

    # --- hosts ---------------------------------------------------------------------------
    def host_proc_env(self, host: FleetHost) -> dict[str, str]:
        return {**os.environ, **host.env, "BERTH_HEARTBEAT_SECONDS": "1"}

    def start_worker(self, host: FleetHost) -> None:
        self.start(f"worker-{host.name}", [str(VENV_BIN / "celery"), "-A", "workers.hostworker", "worker",
                                           "-Q", f"host.{host.name}", "-n", f"host.{host.name}@%h", *WORKER_FLAGS],
                   self.host_proc_env(host))

    def start_agent(self, host: FleetHost) -> None:
        self.start(f"agent-{host.name}", [str(VENV_BIN / "python"), "-m", "workers.agent"], self.host_proc_env(host))

    def stop_agent(self, host: FleetHost) -> None:
        self.stop(f"agent-{host.name}")

    def run_commands(self, name: str, commands: list[str]) -> None:
        """Start a host exactly as the enrol page says (``env K=V … program args``)."""
        for i, command in enumerate(commands):
            argv = shlex.split(command)
            assert argv[0] == "env"
            assignments = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
            program = argv[1 + len(assignments):]
            env = {**os.environ, **dict(a.split("=", 1) for a in assignments), "BERTH_HEARTBEAT_SECONDS": "1"}
            self.start(f"enrolled-{name}-{i}", [str(REPO / program[0]), *program[1:]], env)

    def seed(self, *hosts: FleetHost, cpus: int = 8, memory_mib: int = 16384) -> dict:
        """Rows a test needs (the database is flushed after every test); the hosts come
        online through their own heartbeats."""
        rows = {}
        for host in hosts:
            row = register_host(
                name=host.name, network=host.network, bridge=host.env["BERTH_BRIDGE"],
                state_dir=host.env["BERTH_STATE_DIR"], uid_base=int(host.env["BERTH_UID_BASE"]),
                uid_slots=int(host.env["BERTH_UID_SLOTS"]),
            )
            # The overcommit makes capacity the same on every machine this runs on.
            Host.objects.filter(pk=row.pk).update(
                credential_hash=credentials.hash_secret(host.secret), credential_issued_at=timezone.now(),
                cpu_overcommit=64, memory_overcommit=1,
            )
            rows[host.name] = row
        plan = Plan.objects.create(name="ct-fleet", kind="container", vcpus=1, memory_mib=128, disk_gib=1)
        image = Image.objects.create(name="busybox", kind="container", path="busybox")
        return {"hosts": rows, "plan": plan, "image": image}

    def sweep(self, host: FleetHost) -> None:
        driver = host.driver()
        for status in driver.list_instances():
            spec_path = Path(host.env["BERTH_STATE_DIR"]) / "containers" / status.uuid / "spec.json"
            try:
                driver.destroy(InstanceSpec.from_dict(json.loads(spec_path.read_text())))
            except Exception as exc:  # keep sweeping the rest
                print(f"sweep {host.name}: {status.uuid}: {exc}")
        if (Path(host.env["BERTH_STATE_DIR"]) / "vms").exists():  # a fleet with VMs (FLEET_VMS)
            from tests.stack.conftest import _vm_spec

            vms = host.driver("vm")
            for status in vms.list_instances():
                try:  # destroy() needs only the uuid
                    vms.destroy(_vm_spec(status.uuid))
                except Exception as exc:
                    print(f"sweep {host.name}: VM {status.uuid}: {exc}")


def wait_until(predicate, timeout: float, what: str, fleet: Fleet | None = None, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{fleet.logs()}" if fleet else ""))


def make_host(root: Path, image_dir: Path, prefix: str) -> FleetHost:
    suffix = secrets.token_hex(3)
    name = f"f{suffix}"
    secret = secrets.token_urlsafe(24)
    credentials.apply_acl(name, credentials.hash_secret(secret))
    octet2, octet3 = 200 + secrets.randbelow(50), secrets.randbelow(250)
    url = redis.connection.parse_url(settings.REDIS_URL)
    env = {
        "BERTH_HOST_NAME": name,
        "BERTH_REDIS_URL": f"redis://{prefix}{name}:{secret}@{url.get('host', '127.0.0.1')}:{url.get('port', 6379)}/{url.get('db', 0)}",
        "BERTH_STATE_DIR": str(root / name),
        "BERTH_IMAGE_DIR": str(image_dir),
        "BERTH_BRIDGE": f"bf{suffix}",
        "BERTH_GATEWAY": f"10.{octet2}.{octet3}.1",
        "BERTH_PREFIXLEN": "24",
        "BERTH_UID_BASE": str(300_000_000 + secrets.randbelow(900) * 65536 * 64),
        "BERTH_UID_SLOTS": "64",
    }
    return FleetHost(env=env, network=f"10.{octet2}.{octet3}.0/24", secret=secret)


@pytest.fixture(scope="module", name="fleet")
def fleet_fixture(request, django_db_setup, django_db_blocker):
    """A module that sets ``FLEET_VMS = True`` gets hosts that run VMs too (the tiny image and
    the cached KVM-or-TCG verdict, as the single-host stack has them)."""
    from workers.images.busybox import build_busybox

    root = Path(tempfile.mkdtemp(prefix="berth-fleet-", dir="/var/tmp"))
    root.chmod(0o711)  # container root and QEMU must reach the state and image dirs
    image_dir = root / "images"
    image_dir.mkdir()
    build_busybox(image_dir, lambda _: None)
    with_vms = bool(getattr(request.module, "FLEET_VMS", False))
    prefix = f"berth-test-{secrets.token_hex(3)}-"
    old_prefix = settings.BERTH_REDIS_USER_PREFIX
    settings.BERTH_REDIS_USER_PREFIX = prefix  # this process names the users as the panel does
    db = connection.settings_dict
    port = free_port()
    panel_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "BERTH_IMAGE_DIR": str(image_dir),
        "BERTH_HOSTS_DIR": str(root / "hosts"),
        "BERTH_VAR_DIR": str(root / "var"),
        "BERTH_REDIS_USER_PREFIX": prefix,
        "BERTH_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "CONN_MAX_AGE": "0",
    }
    fleet = Fleet(url=f"http://127.0.0.1:{port}/", root=root, image_dir=image_dir, panel_env=panel_env)
    celery = str(VENV_BIN / "celery")
    try:
        fleet.hosts = [make_host(root, image_dir, prefix) for _ in range(2)]
        if with_vms:
            _add_vms(image_dir, [Path(host.env["BERTH_STATE_DIR"]) for host in fleet.hosts])
        fleet.start("web", [str(VENV_BIN / "uvicorn"), "panel.asgi:application", "--host", "127.0.0.1",
                            "--port", str(port), "--ws", "websockets-sansio", "--lifespan", "off"], panel_env)
        fleet.start("panel-worker", [celery, "-A", "panel", "worker", "-Q", "panel", "-n",
                                     f"panel-{port}@%h", "--concurrency", "2"], panel_env)
        fleet.start("beat", [celery, "-A", "panel", "beat", "-s", str(root / "beat-schedule")], panel_env)
        for host in fleet.hosts:
            fleet.start_worker(host)
            fleet.start_agent(host)
        wait_until(lambda: _http_up(fleet.url), 30, "the web server", fleet)
        yield fleet
    finally:
        for name in list(fleet.procs):
            fleet.stop(name)
        for host in fleet.hosts:
            fleet.sweep(host)
            host.driver().teardown_host()
        admin = redis.Redis.from_url(settings.REDIS_URL)
        for user in admin.acl_users():
            if user.startswith(prefix):
                admin.acl_deluser(user)
        settings.BERTH_REDIS_USER_PREFIX = old_prefix
        if os.environ.get("BERTH_TEST_SHOW_LOGS"):
            print(fleet.logs())
        shutil.rmtree(root, ignore_errors=True)


def _add_vms(image_dir: Path, state_dirs: list[Path]) -> None:
    from tests.stack.conftest import _add_vm_image

    _add_vm_image(image_dir, state_dirs[0])  # the image once, the verdict into each state dir
    for state_dir in state_dirs[1:]:
        state_dir.mkdir(mode=0o711)
        verdict = state_dirs[0] / "virtualization.json"
        if verdict.exists():
            shutil.copyfile(verdict, state_dir / "virtualization.json")


def _http_up(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "login/", timeout=2)
        return True
    except OSError:
        return False


@pytest.fixture(name="fresh_fleet")
def fresh_fleet_fixture(fleet):
    """The fleet with every host empty again after the test (the database is flushed, so
    leftover containers would hold addresses and uid ranges the panel hands out again)."""
    yield fleet
    # Heartbeats lock host rows every second, and the database flush after the test takes
    # every table at once: they can deadlock. Renamed rows are not found by the hosts'
    # reports (heartbeats, and the power states the sweep below causes), so nothing is locked.
    Host.objects.update(name=Concat(F("name"), Value("-gone")))
    for host in fleet.hosts:
        fleet.sweep(host)
        if f"agent-{host.name}" not in fleet.procs:
            fleet.start_agent(host)
