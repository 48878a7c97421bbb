"""The panel's side of the benchmarks: a live Berth and instances ordered through the billing API.

``LiveBerth`` starts what ``make run`` starts for one host — uvicorn (HTTP + WebSockets), the
panel worker, and a throwaway host's worker and agent — against a database of its own
(``berth_bench_vm``, recreated and migrated), with a billing token, a customer (logged in: a
session for ``/ws/events/``), and for each image found in the image directory a plan and the
image: ``tiny`` (a ``vm`` plan), ``busybox`` (a ``container`` plan).

``order_container_to_running`` (the container bench's "order → running" row, see
``bench/containers.py``): the customer's ``/ws/events/`` socket is open, as the panel's pages
keep it; ``POST /api/v1/services/`` → the ``instance.state`` event saying ``running`` on it.

``order_vm_to_prompt`` is what a billing system's customer waits for:
``POST /api/v1/services/`` → the service running (``GET`` polled every 20 ms) → a console
ticket → the guest's shell prompt on the console WebSocket. The VM is terminated afterwards
(untimed). Used by ``bench/vms.py`` (the "order via API → prompt" row); alone:

    .venv/bin/python -m bench.order_flow [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
DB_NAME = "berth_bench_vm"
ROOT = Path("/var/tmp/berth-bench")  # shared with bench/vms.py: images and the KVM verdict
POLL = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveBerth:
    """Berth's processes for one throwaway host, started and stopped as a context manager."""

    def __init__(self, image_dir: Path, verdict: Path | None = None) -> None:
        suffix = secrets.token_hex(3)
        net = f"10.252.{secrets.randbelow(250) + 1}"
        self.root = Path(tempfile.mkdtemp(prefix="live-", dir=ROOT))
        self.root.chmod(0o711)
        state = self.root / "host"
        state.mkdir(mode=0o711)
        if verdict is not None and verdict.exists():
            shutil.copyfile(verdict, state / "virtualization.json")  # skip the 17 s KVM probe
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "panel.settings",
            "DATABASE_URL": f"postgres://root@/{DB_NAME}",
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1"),
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-not-secret-0123456789-0123456789"),
            "BERTH_API_RATE": "100000000/min",
            "BERTH_IMAGE_DIR": str(image_dir),
            "CONN_MAX_AGE": "0",
            "LOG_LEVEL": "WARNING",
        }
        self.host_env = {
            **self.env,
            "BERTH_HOST_NAME": f"bv{suffix}",
            "BERTH_REDIS_URL": self.env["REDIS_URL"],
            "BERTH_STATE_DIR": str(state),
            "BERTH_IMAGE_DIR": str(image_dir),
            "BERTH_BRIDGE": f"bv{suffix}",
            "BERTH_GATEWAY": f"{net}.1",
            "BERTH_PREFIXLEN": "24",
            "BERTH_UID_BASE": str(500_000_000),
            "BERTH_UID_SLOTS": "64",
            "BERTH_HEARTBEAT_SECONDS": "1",
        }
        self.network = f"{net}.0/24"
        self.procs: dict[str, subprocess.Popen] = {}
        self.rows: dict[str, object] = {}
        self.serial = 0
        self.phases: dict[str, float] = {}  # of the last order: seconds since its POST

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LiveBerth:
        try:
            self._database()
            self.rows = self._seed()
            self._start_processes()
            self._wait_for_host()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for name in ("agent", "host-worker", "panel-worker", "web"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._sweep_host()
        shutil.rmtree(self.root, ignore_errors=True)

    def _database(self) -> None:
        import psycopg

        with psycopg.connect("dbname=postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        subprocess.run([str(VENV_BIN / "python"), "manage.py", "migrate", "-v", "0"], cwd=REPO,
                       env=self.env, check=True)

    def _seed(self) -> dict[str, object]:
        """Rows written through the panel's own services (in this process, then closed)."""
        os.environ.update(self.env)
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.db import connections

        from panel.accounts.models import Customer
        from panel.api.services.tokens import create_token
        from panel.catalog.models import Image, Plan
        from panel.hosts.services import register_host

        register_host(name=self.host_env["BERTH_HOST_NAME"], network=self.network,
                      bridge=self.host_env["BERTH_BRIDGE"], state_dir=self.host_env["BERTH_STATE_DIR"],
                      uid_base=int(self.host_env["BERTH_UID_BASE"]), uid_slots=64)
        from django.conf import settings
        from django.test import Client

        images = Path(self.env["BERTH_IMAGE_DIR"])
        user = get_user_model().objects.create_user("bench-vm", "bench-vm@example.com")
        customer = Customer.objects.create(user=user, external_id="bench-vm", max_instances=1000,
                                           max_vcpus=1000, max_memory_mib=10**7)
        browser = Client()
        browser.force_login(user)
        rows: dict[str, object] = {
            "key": create_token(name="bench", scope="billing")[1], "customer": customer.pk,
            "session": f"{settings.SESSION_COOKIE_NAME}="
                       f"{browser.cookies[settings.SESSION_COOKIE_NAME].value}",
        }
        if (images / "tiny" / "metadata.json").exists():
            meta = json.loads((images / "tiny" / "metadata.json").read_text())
            rows["plan"] = Plan.objects.create(name="bench-vm", kind="vm", vcpus=1, memory_mib=256,
                                               disk_gib=1).pk
            rows["image"] = Image.objects.create(name="tiny", kind="vm", path="tiny",
                                                 checksum=meta["checksum"],
                                                 size_bytes=meta["size_bytes"]).pk
        if (images / "busybox").is_dir():
            rows["ct_plan"] = Plan.objects.create(name="bench-ct", kind="container", vcpus=1,
                                                  memory_mib=128, disk_gib=1).pk
            rows["ct_image"] = Image.objects.create(name="busybox", kind="container",
                                                    path="busybox").pk
        connections.close_all()
        return rows

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps its copy)
        with log:
            self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)

    def _start_processes(self) -> None:
        celery = str(VENV_BIN / "celery")
        name = self.host_env["BERTH_HOST_NAME"]
        self._start("web", [str(VENV_BIN / "uvicorn"), "panel.asgi:application", "--host",
                            "127.0.0.1", "--port", str(self.port), "--no-access-log",
                            "--log-level", "warning"], self.env)
        self._start("panel-worker", [celery, "-A", "panel", "worker", "-Q", "panel", "-n",
                                     f"panel-{name}@%h", "--concurrency", "2", "-l", "WARNING"],
                    self.env)
        self._start("host-worker", [celery, "-A", "workers.hostworker", "worker", "-Q",
                                    f"host.{name}", "-n", f"{name}@%h", "--concurrency", "2",
                                    "-l", "WARNING"], {**self.host_env, "BERTH_QUIET_ROOT_WARNING": "1"})
        self._start("agent", [str(VENV_BIN / "python"), "-m", "workers.agent"], self.host_env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "api/v1/schema/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the web server did not start: {self.logs('web')}") from None
                time.sleep(0.2)

    def _wait_for_host(self, timeout: float = 60) -> None:
        """Until the host's agent has said (by heartbeat) that it runs what was seeded."""
        from panel.hosts.models import Host

        wanted = {"name": self.host_env["BERTH_HOST_NAME"], "status": Host.Status.ONLINE}
        if "plan" in self.rows:
            wanted["supports_vms"] = True
        if "ct_plan" in self.rows:
            wanted["supports_containers"] = True
        deadline = time.monotonic() + timeout
        while not Host.objects.filter(**wanted).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the host never offered {wanted}: {self.logs('agent')}")
            time.sleep(0.2)

    def _sweep_host(self) -> None:
        """Whatever a failed run left on the host: containers, domains, files, the bridge."""
        from workers.config import load_host_settings
        from workers.drivers.base import DriverError, ImageSpec, InstanceSpec, NetworkSpec
        from workers.drivers.container import ContainerDriver
        from workers.drivers.vm.driver import VmDriver
        from workers.drivers.vm.storage import InstanceFiles

        host = load_host_settings(self.host_env).host
        containers = ContainerDriver(host)
        for status in containers.list_instances():
            containers.destroy(InstanceSpec(  # destroy reads only the uuid
                uuid=status.uuid, kind="container", hostname="gone", vcpus=1, memory_mib=64,
                disk_gib=1, image=ImageSpec(name="", path=""),
                network=NetworkSpec("0.0.0.0", 24, "0.0.0.0", "02:00:00:00:00:00", "")))
        with contextlib.suppress(DriverError):
            containers.teardown_host()
        driver = VmDriver(host)
        try:
            for status in driver.list_instances():
                driver._remove(status.uuid, InstanceFiles.of(host, status.uuid))
        finally:
            driver.close()
        subprocess.run(["ip", "link", "del", host.bridge], capture_output=True, check=False)

    def logs(self, name: str, tail: int = 40) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    # -- the billing API ---------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One JSON request with the billing token; (status, body)."""
        request = urllib.request.Request(
            self.url + path.lstrip("/"), method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.rows['key']}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def _wait_state(self, service_id: int, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status, service = self.api("GET", f"/api/v1/services/{service_id}/")
            if status == 200 and service["state"] == state:
                return
            if status != 200 or service["state"] == "error" or time.monotonic() > deadline:
                raise RuntimeError(f"service {service_id} is not {state}: {status} {service}\n"
                                   f"{self.logs('host-worker')}\n{self.logs('agent')}")
            time.sleep(POLL)

    def order_container_to_running(self, timeout: float = 30) -> float:
        """Seconds from POST /api/v1/services/ to ``running`` on the customer's /ws/events/."""
        self.serial += 1
        ws_url = self.url.replace("http://", "ws://") + "ws/events/"
        with connect(ws_url, origin=self.url.rstrip("/"), open_timeout=10,
                     additional_headers={"Cookie": str(self.rows["session"])}) as ws:
            hello = json.loads(ws.recv(timeout=10))
            if hello.get("type") != "hello":
                raise RuntimeError(f"/ws/events/ did not start with hello: {hello}")
            t0 = time.perf_counter()
            status, service = self.api("POST", "/api/v1/services/", {
                "external_id": f"bench-{secrets.token_hex(4)}", "customer": self.rows["customer"],
                "plan": self.rows["ct_plan"], "image": self.rows["ct_image"],
                "hostname": f"ct-{self.serial}"})
            if status != 202:
                raise RuntimeError(f"order refused: {status} {service}")
            try:
                while True:
                    left = timeout - (time.perf_counter() - t0)
                    event = json.loads(ws.recv(timeout=max(0.1, left)))
                    if event.get("type") != "instance.state" or event["instance"]["id"] != service["id"]:
                        continue
                    if event["instance"]["state"] == "running":
                        return time.perf_counter() - t0
                    if event["instance"]["state"] == "error":
                        raise RuntimeError(f"the order failed: {event}\n{self.logs('host-worker')}")
            finally:
                self.api("POST", f"/api/v1/services/{service['id']}/terminate")
                self._wait_state(service["id"], "terminated", 60)

    def order_vm_to_prompt(self, timeout: float = 120) -> float:
        """Seconds from POST /api/v1/services/ to the guest's shell prompt on the console."""
        self.serial += 1
        hostname = f"bench-{self.serial}"
        t0 = time.perf_counter()
        status, service = self.api("POST", "/api/v1/services/", {
            "external_id": f"bench-{secrets.token_hex(4)}", "customer": self.rows["customer"],
            "plan": self.rows["plan"], "image": self.rows["image"], "hostname": hostname})
        if status != 202:
            raise RuntimeError(f"order refused: {status} {service}")
        self.phases = {"accepted (202)": time.perf_counter() - t0}
        try:
            self._wait_state(service["id"], "running", timeout)
            self.phases["running in the API"] = time.perf_counter() - t0
            status, ticket = self.api("POST", f"/api/v1/services/{service['id']}/console/")
            if status != 201:
                raise RuntimeError(f"no console ticket: {status} {ticket}")
            prompt = f"{hostname}# ".encode()
            seen = b""
            with connect(self.url.replace("http://", "ws://") + ticket["url"].lstrip("/"),
                         open_timeout=10, max_size=None) as ws:
                while prompt not in seen:
                    message = ws.recv(timeout=max(0.1, timeout - (time.perf_counter() - t0)))
                    if isinstance(message, bytes):
                        seen += message
            return time.perf_counter() - t0
        finally:
            self.api("POST", f"/api/v1/services/{service['id']}/terminate")
            self._wait_state(service["id"], "terminated", 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from bench.vms import prepare_images

    image_dir, verdict = prepare_images()
    rows: dict[str, list[float]] = {}
    with LiveBerth(image_dir, verdict) as berth:
        for _ in range(args.runs):
            total = berth.order_vm_to_prompt()
            for phase, seconds in berth.phases.items():
                rows.setdefault(f"order: {phase}", []).append(seconds)
            rows.setdefault("order via API → prompt", []).append(total)
    for key, values in rows.items():
        print(f"{key:34} median {statistics.median(values):.3f} s, min {min(values):.3f} s, "
              f"max {max(values):.3f} s ({len(values)} runs)")


if __name__ == "__main__":
    main()
