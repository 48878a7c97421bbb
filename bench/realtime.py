"""Realtime benchmark: console keystroke round trip and event fan-out on the live stack
(``tests/stack/launcher.py``: uvicorn, the panel worker, a throwaway host with its worker and
agent, a real busybox container ordered through the panel), printed as one table.

Keystroke round trip, ``--keystrokes`` (1,000) one after another: a byte typed into the
console and its echo back. At the far end ``dd bs=1`` in raw mode (no line editing) returns
each byte as it comes. Three paths:

* direct pty: this process on the master side of a pty, ``dd`` on the other (the floor);
* shim socket: the container's console through its shim's UNIX socket, as the agent sees it;
* browser path: WebSocket → consumer → Redis pub/sub → agent → shim → pty → ``dd`` → shim →
  agent → Redis stream → the web process's stream hub → WebSocket.

Event fan-out: ``--subscribers`` (1,000) WebSockets of one instance's owner on /ws/events/;
for each of ``--changes`` (20) state changes, the time from calling ``transition()`` until
every subscriber has the event (p50/p99 over the changes), and of single deliveries.

    .venv/bin/python bench/realtime.py [--keystrokes 1000] [--subscribers 1000] [--changes 20]
                                       [--web-arg=--ws-per-message-deflate=false ...]

It uses its own database (berth_rt_bench, recreated and migrated each run) and REDIS_URL
(default redis://127.0.0.1:6379/1). Clients and servers share this machine's cores, so the
figures include the benchmark's own load. Goals: keystroke p99 < 20 ms, fan-out to 1,000 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pty
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
DB_NAME = "berth_rt_bench"
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "panel.settings",
    "DATABASE_URL": f"postgres://root@/{DB_NAME}",
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1"),
    "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-not-secret-0123456789-0123456789-0123456789"),
    "CONN_MAX_AGE": "0",
    "LOG_LEVEL": "WARNING",
}


def recreate_database() -> None:
    import psycopg

    with psycopg.connect("dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run([str(VENV_BIN / "python"), "manage.py", "migrate", "-v", "0"], cwd=REPO, env=ENV,
                   check=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {"n": len(ordered), "p50": pct(50), "p99": pct(99), "max": ordered[-1] * 1000,
            "mean": statistics.fmean(ordered) * 1000}


# --- keystrokes ---------------------------------------------------------------------------

ECHO_PROGRAM = "stty raw -echo; echo RE''ADY; dd bs=1 count={n} 2>/dev/null; stty sane; echo DO''NE"


def keys(n: int) -> list[bytes]:
    return [bytes([ord("a") + i % 26]) for i in range(n)]


def direct_pty(n: int) -> list[float]:
    """The floor: a pty in this process, ``dd`` at the other end."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["sh", "-c", ECHO_PROGRAM.format(n=n)], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    while b"READY" not in seen:
        seen += os.read(master, 4096)
    samples = []
    for key in keys(n):
        start = time.perf_counter()
        os.write(master, key)
        got = b""
        while key not in got:
            select.select([master], [], [])
            got += os.read(master, 4096)
        samples.append(time.perf_counter() - start)
    proc.wait(timeout=10)
    os.close(master)
    return samples


class WebConsole:
    """The console WebSocket, as a browser uses it."""

    def __init__(self, ws):
        self.ws = ws
        self.output = b""

    async def until(self, marker: bytes, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while marker not in self.output:
                message = await self.ws.recv()
                if isinstance(message, bytes):
                    self.output += message
        self.output = self.output.split(marker, 1)[1]

    async def start_echo(self, n: int) -> None:
        await self.ws.send(f"{ECHO_PROGRAM.format(n=n)}\r".encode())
        await self.until(b"READY")


async def web_path(console: WebConsole, n: int) -> list[float]:
    await console.start_echo(n)
    samples = []
    for key in keys(n):
        start = time.perf_counter()
        await console.ws.send(key)
        got = b""
        while key not in got:
            message = await console.ws.recv()
            if isinstance(message, bytes):
                got += message
        samples.append(time.perf_counter() - start)
    await console.until(b"DONE")
    return samples


async def shim_path(console: WebConsole, socket_path: Path, n: int) -> list[float]:
    from workers.drivers.container.console import ShimConsole

    await console.start_echo(n)  # typed through the web; measured through the shim's socket
    shim = await ShimConsole.connect(socket_path, from_offset=2**62)  # from the current end
    samples = []
    try:
        for key in keys(n):
            start = time.perf_counter()
            await shim.write(key)
            got = b""
            while key not in got:
                chunk = await shim.read()
                if chunk is None:
                    raise RuntimeError("the console ended")
                got += chunk[1]
            samples.append(time.perf_counter() - start)
    finally:
        await shim.close()
    await console.until(b"DONE")
    return samples


# --- fan-out ------------------------------------------------------------------------------

async def fan_out(events_url: str, headers: list[tuple[str, str]], subscribers: int, changes: int,
                  instance_id: int) -> dict:
    from websockets.asyncio.client import connect

    from panel.instances.models import InstanceState
    from panel.instances.states import transition

    arrivals: dict[int, list[float]] = collections.defaultdict(list)
    done: dict[int, asyncio.Event] = collections.defaultdict(asyncio.Event)
    sockets = []

    async def open_one() -> None:
        ws = await connect(events_url, additional_headers=headers, open_timeout=120, max_size=None)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        sockets.append(ws)

    async def listen(ws) -> None:
        async for message in ws:
            now = time.perf_counter()
            event = json.loads(message)
            if event.get("type") == "instance.state":
                version = event["instance"]["version"]
                arrivals[version].append(now)
                if len(arrivals[version]) == subscribers:
                    done[version].set()

    started = time.perf_counter()
    for batch in range(0, subscribers, 100):
        await asyncio.gather(*(open_one() for _ in range(min(100, subscribers - batch))))
    connected = time.perf_counter() - started
    listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
    all_have_it, singles = [], []
    for k in range(changes):
        target = InstanceState.STOPPED if k % 2 == 0 else InstanceState.RUNNING
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        instance = await asyncio.to_thread(transition, instance_id, target)
        await asyncio.wait_for(done[instance.state_version].wait(), 60)
        times = arrivals[instance.state_version]
        all_have_it.append(max(times) - start)
        singles += [t - start for t in times]
    for task in listeners:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {"connected": connected, "all": all_have_it, "singles": singles}


# --- the run ------------------------------------------------------------------------------

def seed(stack) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from panel.accounts.models import Customer
    from panel.catalog.models import Image, Plan
    from panel.hosts.models import Host
    from panel.hosts.services import register_host
    from panel.instances.models import Instance, InstanceState
    from panel.instances.services.ordering import order_instance

    host = register_host(name=stack.host_name, network=stack.network, bridge=stack.host_env["BERTH_BRIDGE"],
                         state_dir=stack.host_env["BERTH_STATE_DIR"],
                         uid_base=int(stack.host_env["BERTH_UID_BASE"]))
    Host.objects.filter(pk=host.pk).update(status=Host.Status.ONLINE, last_heartbeat=timezone.now(), cpus=8,
                                           memory_mib=16384, disk_gib=100, supports_containers=True)
    plan = Plan.objects.create(name="bench", kind="container", vcpus=1, memory_mib=256, disk_gib=1)
    image = Image.objects.create(name="busybox", kind="container", path="busybox")
    user = get_user_model().objects.create_user("bench", "bench@example.com")
    customer = Customer.objects.create(user=user, name="Bench")
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="bench-1")
    deadline = time.monotonic() + 60
    while Instance.objects.get(pk=instance.pk).state != InstanceState.RUNNING:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the container did not come up:\n{stack.all_logs()}")
        time.sleep(0.1)
    with mock.patch("panel.instances.dispatch.send_operation"):  # a row only: its state is flipped
        flipped = order_instance(customer=customer, plan=plan, image=image, hostname="bench-events")
    Instance.objects.filter(pk=flipped.pk).update(state=InstanceState.RUNNING)
    client = Client()
    client.force_login(user)
    return {"console": instance, "flipped": flipped.pk,
            "headers": [("Cookie", f"sessionid={client.cookies['sessionid'].value}"),
                        ("Origin", stack.url.rstrip("/"))]}


async def measure(stack, rows: dict, args) -> dict:
    from websockets.asyncio.client import connect

    from workers.drivers.container.state import ContainerPaths

    results = {"direct pty (floor)": await asyncio.to_thread(direct_pty, args.keystrokes)}
    url = f"{stack.ws_url}ws/instances/{rows['console'].pk}/console/"
    async with connect(url, additional_headers=rows["headers"], max_size=None) as ws:
        console = WebConsole(ws)
        await ws.send(b"\r")
        socket_path = ContainerPaths.of(stack.host_driver().host, rows["console"].uuid.hex).console
        results["shim socket (container console)"] = await shim_path(console, socket_path, args.keystrokes)
        results["browser path (WebSocket to container and back)"] = await web_path(console, args.keystrokes)
    results["fan-out"] = await fan_out(f"{stack.ws_url}ws/events/", rows["headers"], args.subscribers,
                                       args.changes, rows["flipped"])
    return results


def print_table(results: dict, args) -> None:
    print(f"\nBerth realtime benchmark, {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (clients and servers on this machine)")
    print(f"{'measurement':70} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  goal")
    for name, goal in (("direct pty (floor)", ""), ("shim socket (container console)", ""),
                       ("browser path (WebSocket to container and back)", "p99 < 20 ms")):
        row = percentiles(results[name])
        print(f"{'keystroke round trip: ' + name:70} {row['n']:6} {row['p50']:8.2f} {row['p99']:8.2f} "
              f"{row['max']:8.2f}  {goal}")
    fan = results["fan-out"]
    row = percentiles(fan["all"])
    print(f"{f'state change -> all {args.subscribers} subscribers have it':70} {row['n']:6} {row['p50']:8.1f} "
          f"{row['p99']:8.1f} {row['max']:8.1f}  < 1000 ms")
    row = percentiles(fan["singles"])
    print(f"{'state change -> one subscriber has it':70} {row['n']:6} {row['p50']:8.1f} {row['p99']:8.1f} "
          f"{row['max']:8.1f}")
    print(f"({args.subscribers} event sockets connected in {fan['connected']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keystrokes", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--web-arg", action="append", default=[], help="extra uvicorn argument")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # two sockets per subscriber
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.subscribers + 1024)), hard))
    recreate_database()
    os.environ.update(ENV)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from tests.stack import launcher
    from workers.images.busybox import build_busybox

    def sweep(stack) -> None:
        launcher.destroy_containers(stack)
        stack.host_driver("container").teardown_host()

    with launcher.launch(database_url=ENV["DATABASE_URL"], redis_url=ENV["REDIS_URL"],
                         secret_key=ENV["SECRET_KEY"], prepare=lambda images, _state: build_busybox(images, print),
                         sweep=sweep, web_args=args.web_arg, log_level="WARNING") as stack:
        rows = seed(stack)
        results = asyncio.run(measure(stack, rows, args))
    print_table(results, args)


if __name__ == "__main__":
    main()
