"""`make soak`: orders, actions and terminations in a loop against the live stack, with a
steady API read load beside them, for a bounded time (5 minutes by default). At the end the
panel's view must match the host exactly, and once everything is terminated nothing may be
left on the host: no process, mount, cgroup, veth, state directory or libvirt domain.

    .venv/bin/python scripts/soak.py [--seconds 300] [--services 6] [--readers 2] [--vms]

Run alone it makes its own database (``berth_soak``) and stack (``tests/stack/launcher.py``);
``tests/stack/test_soak.py`` runs a 45-second version against the test stack. It exits non-zero
and says what differed when anything is wrong.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
DB_NAME = "berth_soak"
SETTLED = ("running", "stopped")
ACTIONS = {"running": ("stop", "reboot", "terminate"), "stopped": ("start", "terminate")}


@dataclass
class Report:
    orders: int = 0
    actions: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # 409/422: expected while busy or full
    reads: int = 0
    read_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # anything a client must never see
    mismatches: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(text)

    @property
    def ok(self) -> bool:
        return not (self.errors or self.mismatches or self.leaks)

    def summary(self, seconds: float) -> str:
        lat = sorted(self.read_latencies) or [0.0]
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        lines = [
            f"soak: {seconds:.0f} s, {self.orders} orders, actions {dict(self.actions)}, "
            f"refused {dict(self.refused)}",
            f"reads: {self.reads} ({self.reads / max(seconds, 1):.1f}/s), latency median "
            f"{statistics.median(lat) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms",
        ]
        for title, items in (("errors", self.errors), ("panel vs host", self.mismatches),
                             ("leaks", self.leaks)):
            lines += [f"{title}:"] + [f"  {item}" for item in items] if items else []
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


@dataclass
class Target:
    """Where to soak: the stack, a billing key, the customers and the plans/images to order."""

    stack: object
    key: str
    customers: list[int]
    offers: list[tuple[int, int]]  # (plan id, image id)


def _client(target: Target) -> httpx.Client:
    return httpx.Client(base_url=target.stack.url.rstrip("/") + "/api/v1/", timeout=60,
                        headers={"Authorization": f"Bearer {target.key}"})


def _check(report: Report, response: httpx.Response, what: str, expected: tuple[int, ...]) -> bool:
    if response.status_code in expected:
        return True
    if response.status_code in (409, 422):
        with report.lock:
            report.refused[what] += 1
        return False
    report.error(f"{what}: HTTP {response.status_code} {response.text[:200]}")
    return False


def _actor(target: Target, report: Report, stop: threading.Event, services: int, seed: int) -> None:
    """Keeps up to ``services`` services alive, acting on settled ones at random."""
    rng = random.Random(seed)
    live: set[int] = set()
    with _client(target) as api:
        while not stop.is_set():
            if len(live) < services and rng.random() < 0.4:
                plan, image = rng.choice(target.offers)
                response = api.post("services/", json={
                    "external_id": f"soak-{secrets.token_hex(6)}", "customer": rng.choice(target.customers),
                    "plan": plan, "image": image, "hostname": f"soak-{secrets.token_hex(3)}",
                })
                if _check(report, response, "order", (202,)):
                    live.add(response.json()["id"])
                    with report.lock:
                        report.orders += 1
            elif live:
                service = rng.choice(sorted(live))
                state = api.get(f"services/{service}/").json().get("state")
                if state in ("terminated", "error"):
                    live.discard(service)
                    if state == "error":
                        report.error(f"service {service} ended in error")
                elif state in ACTIONS:
                    action = rng.choice(ACTIONS[state])
                    response = api.post(f"services/{service}/{action}")
                    if _check(report, response, action, (202,)):
                        with report.lock:
                            report.actions[action] += 1
            stop.wait(rng.uniform(0.05, 0.4))


def _reader(target: Target, report: Report, stop: threading.Event, per_second: float) -> None:
    """The steady API load beside the changes: lists, details, operations."""
    with _client(target) as api:
        while not stop.is_set():
            started = time.monotonic()
            response = api.get("services/", params={"limit": 50})
            if _check(report, response, "list", (200,)):
                for service in response.json()["results"][:3]:
                    _check(report, api.get(f"services/{service['id']}/"), "read", (200,))
            with report.lock:
                report.reads += 1
                report.read_latencies.append(time.monotonic() - started)
            stop.wait(max(0.0, 1 / per_second - (time.monotonic() - started)))


def soak(target: Target, *, seconds: float, services: int = 6, readers: int = 2,
         read_rate: float = 10.0, log: Callable[[str], None] = print) -> Report:
    """Run the loop for ``seconds``, then settle, compare, terminate everything and look for
    leaks. Needs Django set up on the stack's database (it reads the panel's rows)."""
    from panel.instances.models import Instance  # noqa: PLC0415

    report = Report()
    before = host_traces(target.stack, uuids=set())
    stop = threading.Event()
    threads = [threading.Thread(target=_actor, args=(target, report, stop, services, i), daemon=True)
               for i in range(2)]
    threads += [threading.Thread(target=_reader, args=(target, report, stop, read_rate), daemon=True)
                for _ in range(readers)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    elapsed = time.monotonic() - started
    log(f"soak: loop over after {elapsed:.0f} s; settling")

    uuids = {u.hex for u in Instance.objects.values_list("uuid", flat=True)}
    _settle(report)
    compare(target.stack, report)
    _terminate_all(target, report)
    after = host_traces(target.stack, uuids=uuids)
    report.leaks += [f"{kind}: {item}" for kind, items in after.items()
                     for item in sorted(set(items) - set(before.get(kind, [])))]
    log(report.summary(elapsed))
    return report


def _settle(report: Report, timeout: float = 180) -> None:
    """Wait until no operation is queued or running."""
    from panel.instances.models import Operation  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    busy = Operation.objects.filter(state__in=("queued", "running"))
    while busy.exists():
        if time.monotonic() > deadline:
            report.mismatches.append(f"operations never finished: {list(busy.values_list('id', 'action'))}")
            return
        time.sleep(0.5)
    failed = Operation.objects.filter(state="failed").values_list("id", "action", "error")
    report.errors += [f"operation {i} ({a}) failed: {e}" for i, a, e in failed]


def compare(stack, report: Report) -> None:
    """The panel's live instances on this host against what the host really runs."""
    from panel.instances.models import Instance  # noqa: PLC0415

    on_host: dict[str, str] = {}
    for kind in ("container", "vm"):
        for status in stack.host_driver(kind).list_instances():
            on_host[status.uuid] = status.state.value if hasattr(status.state, "value") else str(status.state)
    panel = {i.uuid.hex: i.state for i in Instance.objects.live().filter(host__name=stack.host_name)}
    for uuid, state in sorted(panel.items()):
        seen = on_host.get(uuid, "absent")
        if state not in SETTLED or seen != state:
            report.mismatches.append(f"{uuid}: panel says {state}, host says {seen}")
    report.mismatches += [f"{uuid}: on the host ({state}), unknown to the panel"
                          for uuid, state in sorted(on_host.items()) if uuid not in panel]


def _terminate_all(target: Target, report: Report, timeout: float = 180) -> None:
    from panel.instances.models import Instance  # noqa: PLC0415

    with _client(target) as api:
        for service in Instance.objects.live().values_list("pk", flat=True):
            _check(report, api.post(f"services/{service}/terminate"), "final terminate", (202,))
    deadline = time.monotonic() + timeout
    while Instance.objects.live().exists():
        if time.monotonic() > deadline:
            report.mismatches.append(f"not terminated: {list(Instance.objects.live().values_list('pk', 'state'))}")
            return
        time.sleep(0.5)


def host_traces(stack, *, uuids: set[str]) -> dict[str, list[str]]:
    """Everything of this host's instances on the machine: shims and other processes, mounts,
    cgroups, veths, state directories, libvirt domains."""
    state_dir = stack.host_env["BERTH_STATE_DIR"]
    traces: dict[str, list[str]] = {}
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state_dir in argv or any(u in argv for u in uuids):
                processes.append(f"{entry.name} {argv[:120]}")
    traces["processes"] = processes
    with open("/proc/self/mountinfo") as f:
        traces["mounts"] = [line.split()[4] for line in f if state_dir in line or any(u in line for u in uuids)]
    traces["cgroups"] = [str(p) for u in uuids for p in Path("/sys/fs/cgroup").glob(f"*/**/{u}")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    traces["veths"] = [f"bv{u[:12]}" for u in uuids if f"bv{u[:12]}" in links]
    containers = Path(state_dir) / "containers"
    traces["state dirs"] = sorted(p.name for p in containers.iterdir()) if containers.is_dir() else []
    domains = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--uuid"],
                             capture_output=True, text=True).stdout.split()
    traces["domains"] = [d for d in domains if d.replace("-", "") in uuids]
    return traces


# --- run alone -----------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--services", type=int, default=6, help="live services at most, per actor")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--read-rate", type=float, default=10.0, help="list reads per second per reader")
    parser.add_argument("--vms", action="store_true", help="order tiny VMs too (TCG here: slow)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    env = {
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "DATABASE_URL": f"postgres://root@/{DB_NAME}",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "soak-only-not-secret-0123456789-0123456789-0123456789"),
        "CONN_MAX_AGE": "0",
    }
    os.environ.update(env)
    _recreate_database(env)
    import django  # noqa: PLC0415

    django.setup()
    from tests.stack import launcher  # noqa: PLC0415
    from workers.images.busybox import build_busybox  # noqa: PLC0415

    def prepare(images: Path, state: Path) -> None:
        build_busybox(images, lambda _: None)
        if args.vms:
            from tests.stack.conftest import _add_vm_image  # noqa: PLC0415

            _add_vm_image(images, state)

    def sweep(stack) -> None:
        launcher.destroy_containers(stack)
        stack.host_driver("container").teardown_host()

    with launcher.launch(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"],
                         secret_key=env["SECRET_KEY"], prepare=prepare, sweep=sweep, beat=True,
                         log_level="WARNING") as stack:
        target = _seed(stack, vms=args.vms)
        report = soak(target, seconds=args.seconds, services=args.services, readers=args.readers,
                      read_rate=args.read_rate)
    return 0 if report.ok else 1


def _recreate_database(env: dict[str, str]) -> None:
    import psycopg  # noqa: PLC0415

    with psycopg.connect("dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO,
                   env={**os.environ, **env}, check=True)


def _seed(stack, *, vms: bool) -> Target:
    from django.utils import timezone  # noqa: PLC0415

    from panel.api.services.tokens import create_token  # noqa: PLC0415
    from panel.catalog.models import Image, Plan  # noqa: PLC0415
    from panel.hosts.models import Host  # noqa: PLC0415
    from panel.hosts.services import register_host  # noqa: PLC0415
    from tests.factories import CustomerFactory  # noqa: PLC0415

    host = register_host(name=stack.host_name, network=stack.network, bridge=stack.host_env["BERTH_BRIDGE"],
                         state_dir=stack.host_env["BERTH_STATE_DIR"],
                         uid_base=int(stack.host_env["BERTH_UID_BASE"]))
    Host.objects.filter(pk=host.pk).update(status=Host.Status.ONLINE, last_heartbeat=timezone.now(),
                                           cpus=64, memory_mib=65536, disk_gib=1000,
                                           supports_containers=True, supports_vms=vms)
    offers = [(Plan.objects.create(name="soak-ct", kind="container", vcpus=1, memory_mib=128, disk_gib=1).pk,
               Image.objects.create(name="busybox", kind="container", path="busybox").pk)]
    if vms:
        import json  # noqa: PLC0415

        tiny = json.loads((stack.image_dir / "tiny" / "metadata.json").read_text())
        offers.append((Plan.objects.create(name="soak-vm", kind="vm", vcpus=1, memory_mib=128, disk_gib=1).pk,
                       Image.objects.create(name="tiny", kind="vm", path="tiny", checksum=tiny["checksum"],
                                            size_bytes=tiny["size_bytes"]).pk))
    customers = [CustomerFactory(max_instances=100, max_vcpus=100, max_memory_mib=100_000).pk for _ in range(3)]
    return Target(stack=stack, key=create_token(name="soak", scope="billing")[1], customers=customers,
                  offers=offers)


if __name__ == "__main__":
    sys.exit(main())
