"""Container benchmark: Berth's driver against LXC and a bare ``unshare … chroot``, side by side
on the same busybox rootfs, plus the host memory each container costs.

Rows (median and p95 of ``--runs``, default 20, each run after ``--idle`` seconds of quiet so
that no run rides on the previous one's warm kernel state):

* Berth ``create`` → first console output (the caller reads it from the shim's socket); Berth
  ``start`` of a stopped container → first output; graceful ``stop``; ``destroy``.
* LXC 5 (Debian's ``lxc``), same features as Berth's container: user namespace with a 65536-id
  range, idmapped rootfs, veth on the same bridge: ``lxc-start -d`` → first byte in the console log.
* Floor: ``unshare --user --map-root-user --pid --mount --uts --ipc --net --fork chroot`` → first
  byte on stdout (no cgroups, no network, no console).
* Memory: PSS and RSS of Berth's shim with 1 and with ``--scale`` (default 100) containers,
  against LXC's monitor.

* Order through the billing API → ``running`` seen by the customer's ``/ws/events/``
  WebSocket: the whole panel (web server, panel worker, a host's worker and agent:
  ``bench/order_flow.py``) on this machine, after the rows above, one untimed order first.

``--phases`` prints instead where one create's time goes: the median moment (ms after the
call) at which each step of the start begins and ends, and the shim's reports arrive.

    .venv/bin/python -m bench.containers [--runs 20] [--scale 100] [--phases]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import secrets
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from workers.drivers.base import HostConfig, ImageSpec, InstanceSpec, NetworkSpec
from workers.drivers.container import ContainerDriver
from workers.drivers.container.console import ShimConsole
from workers.drivers.container.state import ContainerPaths, ProcRef
from workers.images.busybox import build_busybox

ROOT = Path("/var/tmp/berth-bench-ct")
LXC_PATH_ENV = {"PATH": "/usr/sbin:/sbin"}  # without newuidmap: LXC (as root) writes the maps itself


class Bench:
    def __init__(self, root: Path) -> None:
        suffix = secrets.token_hex(3)
        self.net = f"10.251.{secrets.randbelow(250) + 1}"
        image_dir = root / "images"
        self.image = build_busybox(image_dir, lambda _msg: None)
        self.host = HostConfig(
            name=f"b{suffix}", state_dir=root / f"host-{suffix}", image_dir=image_dir,
            bridge=f"bbc{suffix}", gateway=f"{self.net}.1", prefixlen=24,
            uid_base=400_000_000, uid_slots=256)
        self.driver = ContainerDriver(self.host)
        self.driver.prepare_host()
        self.root = root
        self.serial = 0

    def spec(self) -> InstanceSpec:
        self.serial += 1
        n = self.serial
        uuid = secrets.token_hex(16)
        return InstanceSpec(
            uuid=uuid, kind="container", hostname=f"bench{n}", vcpus=1, memory_mib=128,
            disk_gib=1, image=ImageSpec(name="busybox", path="busybox"), uid_slot=n % 256,
            network=NetworkSpec(address=f"{self.net}.{10 + n % 240}", prefixlen=24,
                                gateway=self.host.gateway, mac=f"02:bb:00:00:{n >> 8:02x}:{n & 255:02x}",
                                bridge=self.host.bridge))

    async def _first_output(self, uuid: str) -> None:
        console = await ShimConsole.connect(ContainerPaths.of(self.host, uuid).console)
        try:
            if await console.read() is None:
                raise RuntimeError("the console ended before any output")
        finally:
            await console.close()

    def create_to_output(self) -> tuple[float, InstanceSpec]:
        spec = self.spec()
        started = time.perf_counter()
        self.driver.create(spec)
        asyncio.run(self._first_output(spec.uuid))
        return time.perf_counter() - started, spec

    def start_to_output(self, spec: InstanceSpec) -> float:
        started = time.perf_counter()
        self.driver.start(spec)
        asyncio.run(self._first_output(spec.uuid))
        return time.perf_counter() - started

    def timed(self, action: Callable[[], object]) -> float:
        started = time.perf_counter()
        action()
        return time.perf_counter() - started

    def close(self) -> None:
        for status in self.driver.list_instances():
            self.driver.destroy(self.spec_for(status.uuid))
        self.driver.teardown_host()
        shutil.rmtree(self.host.state_dir, ignore_errors=True)

    def spec_for(self, uuid: str) -> InstanceSpec:
        return dataclasses.replace(self.spec(), uuid=uuid)


class Lxc:
    """One LXC container on the same rootfs, bridge and kind of id range as Berth's."""

    def __init__(self, bench: Bench) -> None:
        self.path = bench.root / "lxc"
        self.name = "benchct"
        (self.path / self.name).mkdir(parents=True, exist_ok=True)
        self.console_log = self.path / "console.log"
        uid = 400_000_000 + 255 * 65536
        (self.path / self.name / "config").write_text(f"""\
lxc.uts.name = lxcbench
lxc.rootfs.path = dir:{bench.image.rootfs}
lxc.rootfs.options = idmap=container
lxc.idmap = u 0 {uid} 65536
lxc.idmap = g 0 {uid} 65536
lxc.net.0.type = veth
lxc.net.0.link = {bench.host.bridge}
lxc.net.0.flags = up
lxc.net.0.ipv4.address = {bench.net}.250/24
lxc.init.cmd = /bin/sh -l
lxc.mount.auto = proc:mixed sys:mixed
lxc.tty.max = 0
lxc.pty.max = 16
lxc.apparmor.profile = unconfined
lxc.console.logfile = {self.console_log}
""")

    def _lxc(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([f"/usr/bin/{tool}", "-n", self.name, "-P", str(self.path), *args],
                              env=LXC_PATH_ENV, capture_output=True, text=True)

    def start_to_output(self) -> float:
        self.console_log.unlink(missing_ok=True)
        started = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/lxc-start", "-d", "-n", self.name, "-P", str(self.path)],
                                env=LXC_PATH_ENV)
        while not (self.console_log.exists() and self.console_log.stat().st_size > 0):
            if time.perf_counter() - started > 10:
                raise RuntimeError("LXC printed nothing within 10 s")
            time.sleep(0.0002)
        elapsed = time.perf_counter() - started
        proc.wait()
        return elapsed

    def monitor_pid(self) -> int | None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(b"[lxc monitor]") and self.name.encode() in cmdline:
                    return int(entry)
        return None

    def stop(self) -> None:
        self._lxc("lxc-stop", "-k")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.path, ignore_errors=True)


def unshare_to_output(rootfs: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(["unshare", "--user", "--map-root-user", "--pid", "--mount", "--uts",
                             "--ipc", "--net", "--fork", "chroot", str(rootfs), "/bin/sh", "-c",
                             "echo ready"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    proc.wait()
    return elapsed


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return statistics.median(ordered), p95


def main(runs: int = 20, idle: float = 0.3, scale: int = 100) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    ROOT.mkdir(parents=True, exist_ok=True)
    bench = Bench(ROOT)
    lxc = Lxc(bench) if shutil.which("lxc-start") else None
    rows: dict[str, list[float]] = {}
    memory: list[tuple[str, str]] = []

    def record(name: str, measure: Callable[[], float]) -> None:
        time.sleep(idle)
        rows.setdefault(name, []).append(measure() * 1000)

    try:
        for _ in range(runs):
            time.sleep(idle)
            elapsed, spec = bench.create_to_output()
            rows.setdefault("Berth create → first console output", []).append(elapsed * 1000)
            record("Berth stop (graceful, SIGTERM)",
                   functools.partial(bench.timed, functools.partial(bench.driver.stop, spec)))
            record("Berth start → first console output",
                   functools.partial(bench.start_to_output, spec))
            record("Berth destroy",
                   functools.partial(bench.timed, functools.partial(bench.driver.destroy, spec)))
            if lxc is not None:
                record("LXC lxc-start → first console output", lxc.start_to_output)
                lxc.stop()
            record("unshare … chroot → first output (floor)",
                   functools.partial(unshare_to_output, bench.image.rootfs))

        _, first = bench.create_to_output()
        time.sleep(0.5)
        shim = ProcRef.load(ContainerPaths.of(bench.host, first.uuid).shim_pid)
        assert shim is not None
        pss, rss = memory_kib(shim.pid)
        memory.append(("Berth shim, 1 container", f"PSS {pss} KiB, RSS {rss} KiB"))
        if lxc is not None:
            lxc.start_to_output()
            time.sleep(0.5)
            monitor = lxc.monitor_pid()
            if monitor is not None:
                pss, rss = memory_kib(monitor)
                memory.append(("LXC monitor, 1 container", f"PSS {pss} KiB, RSS {rss} KiB"))
            lxc.stop()
        for _ in range(scale - 1):
            bench.create_to_output()
        time.sleep(0.5)
        shims = [ProcRef.load(ContainerPaths.of(bench.host, s.uuid).shim_pid)
                 for s in bench.driver.list_instances()]
        per = [memory_kib(s.pid) for s in shims if s is not None]
        memory.append((f"Berth shim, {len(per)} containers",
                       f"PSS {sum(p for p, _ in per) / len(per):.0f} KiB each "
                       f"(total {sum(p for p, _ in per) / 1024:.1f} MiB), RSS {per[-1][1]} KiB"))
    finally:
        bench.close()
        if lxc is not None:
            lxc.close()
        shutil.rmtree(ROOT, ignore_errors=True)

    rows["order via API → running on /ws/events/"] = [s * 1000 for s in order_to_running(runs, idle)]

    width = max(len(name) for name in rows) + 2
    print(f"\n{'ms, ' + str(runs) + ' runs':{width}} {'median':>8} {'p95':>8}")
    for name, samples in rows.items():
        median, p95 = stats(samples)
        print(f"{name:{width}} {median:8.1f} {p95:8.1f}")
    print()
    for name, value in memory:
        print(f"{name:{width}} {value}")


def order_to_running(runs: int, idle: float) -> list[float]:
    """Seconds from an order through the billing API to ``running`` on the customer's
    /ws/events/ socket, with the whole panel running (bench/order_flow.py)."""
    from bench.order_flow import ROOT as LIVE_ROOT
    from bench.order_flow import LiveBerth

    LIVE_ROOT.mkdir(parents=True, exist_ok=True)
    image_dir = LIVE_ROOT / f"ct-images-{secrets.token_hex(3)}"
    try:
        build_busybox(image_dir, lambda _msg: None)
        with LiveBerth(image_dir) as berth:
            berth.order_container_to_running()  # untimed: workers' first task, imports
            samples = []
            for _ in range(runs):
                time.sleep(idle)
                samples.append(berth.order_container_to_running())
            return samples
    finally:
        shutil.rmtree(image_dir, ignore_errors=True)


def phases(runs: int = 20, idle: float = 0.3) -> None:
    """Timeline of ``create`` → first console output, median over ``runs``."""
    from workers.drivers.container import cgroups, network, rootfs, spawn

    events: list[tuple[str, float]] = []
    t0 = [0.0]

    def mark(label: str) -> None:
        events.append((label, (time.perf_counter() - t0[0]) * 1000))

    def timed_step(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def step(*args: object, **kwargs: object) -> object:
            mark(f"{label} >")
            try:
                return original(*args, **kwargs)
            finally:
                mark(f"{label} <")
        setattr(owner, name, step)

    next_line = spawn._Lines.next

    def report(self: spawn._Lines, deadline: float | None = None) -> str | None:
        line = next_line(self, deadline)
        mark(f"shim: {line.split()[0] if line else 'EOF'}")
        return line
    spawn._Lines.next = report
    for owner, name, label in ((rootfs, "create_disk", "disk (template copy)"),
                               (os, "posix_spawn", "spawn shim"),
                               (rootfs, "open_disk", "loop + mount disk (detached)"),
                               (spawn, "_prepare", "disk layers"),
                               (network, "add_container_link", "veth + eth0"),
                               (cgroups.CgroupV1, "create", "cgroups created"),
                               (cgroups.CgroupV2, "create", "cgroups created")):
        timed_step(owner, name, label)
    ROOT.mkdir(parents=True, exist_ok=True)
    bench = Bench(ROOT)
    timelines = []
    try:
        for _ in range(runs):
            time.sleep(idle)
            events.clear()
            t0[0] = time.perf_counter()
            _, spec = bench.create_to_output()
            mark("first console output")
            timelines.append(list(events))
            bench.driver.destroy(spec)
    finally:
        bench.close()
        shutil.rmtree(ROOT, ignore_errors=True)
    moments: dict[str, list[float]] = {}
    for timeline in timelines:
        for label, at in timeline:
            moments.setdefault(label, []).append(at)
    print(f"\n{'create, ms after the call (median of ' + str(runs) + ')':44} {'at':>6}")
    for label, ats in sorted(moments.items(), key=lambda item: statistics.median(item[1])):
        print(f"{label:44} {statistics.median(ats):6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle", type=float, default=0.3, help="seconds of quiet before each run")
    parser.add_argument("--scale", type=int, default=100, help="containers for the memory row")
    parser.add_argument("--phases", action="store_true", help="where a create's time goes")
    args = parser.parse_args()
    if args.phases:
        phases(runs=args.runs, idle=args.idle)
    else:
        main(runs=args.runs, idle=args.idle, scale=args.scale)
