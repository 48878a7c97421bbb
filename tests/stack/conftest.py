"""The real thing, started for the tests: uvicorn (ASGI), the panel worker, and a throwaway
host (its own name, bridge, subnet, state dir, uid range) with its host worker and agent.

The processes share the test database (PostgreSQL) and Redis database 1 with the tests. Tests
that use the stack need ``transactional_db`` so what they write is visible to the processes.
Everything the host made is swept when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from panel.catalog.models import Image, Plan
from panel.hosts.models import Host
from panel.hosts.services import register_host
from workers.config import load_host_settings
from workers.drivers.base import InstanceSpec
from workers.drivers.registry import get_driver

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    host_env: dict[str, str]
    network: str
    image_dir: Path
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def host_name(self) -> str:
        return self.host_env["BERTH_HOST_NAME"]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def logs(self, name: str, tail: int = 60) -> str:
        path = self.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-tail:])

    def all_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.logs(name)}" for name in self.procs)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # pool children left in the group
            os.killpg(proc.pid, signal.SIGKILL)

    def host_driver(self, kind: str = "container"):
        return get_driver(kind, load_host_settings(self.host_env).host)

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
        return {"host": Host.objects.get(pk=host.pk), "plan": plan, "image": image}


def _wait_http(url: str, timeout: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "login/", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"web server did not start:\n{stack.all_logs()}")


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker):
    from workers.images.busybox import build_busybox

    # Not pytest's tmp dir: it is 0700, and container root (an unprivileged host uid) and QEMU
    # must be able to reach the state and image dirs.
    root = Path(tempfile.mkdtemp(prefix="berth-stack-", dir="/var/tmp"))
    root.chmod(0o711)
    image_dir = root / "images"
    image_dir.mkdir()
    build_busybox(image_dir, lambda _: None)
    suffix = secrets.token_hex(3)
    net = 200 + secrets.randbelow(50)
    host_env = {
        "BERTH_HOST_NAME": f"t{suffix}",
        "BERTH_REDIS_URL": settings.REDIS_URL,
        "BERTH_STATE_DIR": str(root / "host"),
        "BERTH_IMAGE_DIR": str(image_dir),
        "BERTH_BRIDGE": f"bt{suffix}",
        "BERTH_GATEWAY": f"10.{net}.{secrets.randbelow(250)}.1",
        "BERTH_PREFIXLEN": "24",
        "BERTH_UID_BASE": str(300_000_000 + secrets.randbelow(1000) * 65536 * 64),
        "BERTH_UID_SLOTS": "64",
        "BERTH_HEARTBEAT_SECONDS": "1",
    }
    db = connection.settings_dict
    panel_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "BERTH_IMAGE_DIR": str(image_dir),
        "CONN_MAX_AGE": "0",
        "LOG_LEVEL": "INFO",
    }
    port = free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}/", host_env=host_env,
                  network=host_env["BERTH_GATEWAY"].rsplit(".", 1)[0] + ".0/24",
                  image_dir=image_dir, log_dir=root)
    celery = str(VENV_BIN / "celery")
    host_proc_env = {**os.environ, **host_env}
    try:
        stack.start("web", [str(VENV_BIN / "uvicorn"), "panel.asgi:application", "--host", "127.0.0.1",
                            "--port", str(port), "--ws", "websockets-sansio", "--lifespan", "off"], panel_env)
        stack.start("panel-worker", [celery, "-A", "panel", "worker", "-Q", "panel", "-n",
                                     f"panel-{suffix}@%h", "--concurrency", "2"], panel_env)
        stack.start("host-worker", [celery, "-A", "workers.hostworker", "worker", "-Q",
                                    f"host.{host_env['BERTH_HOST_NAME']}", "-n", f"host-{suffix}@%h",
                                    "--concurrency", "2"], host_proc_env)
        stack.start("agent", [str(VENV_BIN / "python"), "-m", "workers.agent"], host_proc_env)
        _wait_http(stack.url, 30, stack)
        yield stack
    finally:
        for name in list(stack.procs):
            stack.stop(name)
        sweep_host(stack)
        if os.environ.get("BERTH_TEST_SHOW_LOGS"):
            print(stack.all_logs())
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_host(request):
    """Each stack test starts on an empty host: the database is flushed after every test, so
    containers a failed test left behind would hold addresses and uid ranges the panel reuses."""
    yield
    if "stack" in request.fixturenames:
        destroy_instances(request.getfixturevalue("stack"))


def destroy_instances(stack: Stack) -> None:
    driver = stack.host_driver("container")
    for status in driver.list_instances():
        spec_path = Path(stack.host_env["BERTH_STATE_DIR"]) / "containers" / status.uuid / "spec.json"
        try:
            driver.destroy(InstanceSpec.from_dict(json.loads(spec_path.read_text())))
        except Exception as exc:  # keep sweeping the rest
            print(f"sweep: {status.uuid}: {exc}")


def sweep_host(stack: Stack) -> None:
    """Destroy whatever the test host still has, then remove its bridge and cgroups."""
    destroy_instances(stack)
    stack.host_driver("container").teardown_host()
