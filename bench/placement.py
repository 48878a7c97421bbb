"""Placement under contention: how long an order's transaction (quota, placement under the host
row locks, reservations) takes as the fleet grows, with orders arriving in parallel.

For each fleet size, hosts rows (online, room for everything) are created in a database of its
own (``berth_bench_placement``, recreated and migrated), then ``--threads`` threads each place
``--orders`` orders through ``order_instance`` (tasks to hosts are not sent). Prints the
per-order latency (median, p95) and the orders per second. No host process runs: this measures
the panel's side only.

    .venv/bin/python -m bench.placement [--hosts 1,10,100] [--threads 8] [--orders 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DB_NAME = "berth_bench_placement"


def setup_django() -> None:
    os.environ["DATABASE_URL"] = f"postgres://root@/{DB_NAME}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret-0123456789-0123456789-0123456789")
    os.environ["CONN_MAX_AGE"] = "0"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    subprocess.run(["dropdb", "--if-exists", "-U", "root", DB_NAME], check=True)
    subprocess.run(["createdb", "-U", "root", DB_NAME], check=True)
    sys.path.insert(0, str(REPO))
    import django  # noqa: PLC0415

    django.setup()
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", verbosity=0)


def run(hosts: int, threads: int, orders: int) -> dict[str, float]:
    import ipaddress  # noqa: PLC0415

    from django.contrib.auth import get_user_model  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from panel.accounts.models import Customer  # noqa: PLC0415
    from panel.catalog.models import Image, Plan  # noqa: PLC0415
    from panel.hosts.models import Host, IpPool  # noqa: PLC0415
    from panel.instances import dispatch  # noqa: PLC0415
    from panel.instances.models import Instance  # noqa: PLC0415
    from panel.instances.services.ordering import order_instance  # noqa: PLC0415

    dispatch.celery_app.send_task = lambda *a, **k: None  # no host runs: the panel side only
    Instance.objects.all().delete()
    Host.objects.all().delete()
    for i in range(hosts):
        host = Host.objects.create(name=f"b{i}", status="online", last_heartbeat=timezone.now(), cpus=1024,
                                   memory_mib=2**22, disk_gib=2**20, supports_containers=True,
                                   state_dir=f"/tmp/bench-{i}", uid_slots=4096)
        net = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.0.0.0")) + i * 4096, 20))
        IpPool.objects.create(host=host, network=str(net), gateway=str(next(net.hosts())))
    plan, _ = Plan.objects.get_or_create(name="bench", kind="container", vcpus=1, memory_mib=128, disk_gib=1)
    image, _ = Image.objects.get_or_create(name="busybox", kind="container", path="busybox")
    User = get_user_model()
    customers = []
    for t in range(threads):
        user, _ = User.objects.get_or_create(username=f"bench{t}")
        customer, _ = Customer.objects.get_or_create(user=user, defaults={"max_instances": 10**6,
                                                                          "max_vcpus": 10**6, "max_memory_mib": 2**30})
        customers.append(customer)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        barrier.wait()
        for n in range(orders):
            started = time.perf_counter()
            order_instance(customer=customers[t], plan=plan, image=image, hostname=f"w{t}-{n}")
            with lock:
                latencies.append(time.perf_counter() - started)
        connection.close()

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "per_s": len(latencies) / elapsed,
        "placed": Instance.objects.count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,10,100")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--orders", type=int, default=25, help="orders per thread")
    args = parser.parse_args()
    setup_django()
    print(f"{'hosts':>6} {'orders':>7} {'median ms':>10} {'p95 ms':>8} {'orders/s':>9}   "
          f"({args.threads} threads, PostgreSQL, load before {os.getloadavg()[0]:.2f})")
    for hosts in [int(h) for h in args.hosts.split(",")]:
        r = run(hosts, args.threads, args.orders)
        print(f"{hosts:>6} {int(r['placed']):>7} {r['median_ms']:>10.1f} {r['p95_ms']:>8.1f} {r['per_s']:>9.1f}")
    from django.db import connections  # noqa: PLC0415

    connections.close_all()
    subprocess.run(["dropdb", "--if-exists", "-U", "root", DB_NAME], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
