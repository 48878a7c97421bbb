"""VM benchmark: Berth against plain libvirt, tiny guest to its shell prompt.

Rows (median of ``--runs``, default 5): ``virsh create`` of the very XML the driver defines
(the files it needs made beforehand, untimed) → prompt in the serial log; ``VmDriver.create``
(overlay + config disk + define + start paused + resume) → prompt; the whole of Berth: a VM
ordered through the billing API (``POST /api/v1/services/``) of a live panel
(``bench/order_flow.py``: web server, panel worker, host worker and agent) → the prompt on its
console WebSocket (console ticket); graceful stop (ACPI) and destroy; host memory per idle
guest (qemu's RSS and PSS). "vs virsh" is each prompt row's overhead over libvirt alone.
The panel's host worker gets two untimed orders first (its processes' first operation also
connects to libvirt and prepares the host).

    .venv/bin/python -m bench.vms [--runs 5] [--no-panel]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.order_flow import LiveBerth
from workers.drivers.base import HostConfig, ImageSpec, InstanceSpec, NetworkSpec
from workers.drivers.vm.capabilities import detect_virtualization, load_verdict
from workers.drivers.vm.daemons import ensure_daemons
from workers.drivers.vm.driver import VmDriver
from workers.drivers.vm.image import VmImage
from workers.drivers.vm.storage import InstanceFiles, create_config_disk, create_overlay
from workers.drivers.vm.xml import domain_xml
from workers.images.vm_tiny import build_vm_tiny

ROOT = Path("/var/tmp/berth-bench")
GATEWAY = "10.253.9.1"
URI = "qemu:///system"


def _spec(host: HostConfig) -> InstanceSpec:
    uuid = secrets.token_hex(16)
    return InstanceSpec(
        uuid=uuid, kind="vm", hostname=f"b{uuid[:6]}", vcpus=1, memory_mib=256, disk_gib=1,
        image=ImageSpec(name="tiny", path="tiny"),
        network=NetworkSpec(address="10.253.9.10", prefixlen=24, gateway=GATEWAY,
                            mac="52:54:00:" + ":".join(uuid[i:i + 2] for i in (0, 2, 4)),
                            bridge=host.bridge))


def _wait_prompt(log: Path, prompt: bytes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and prompt in log.read_bytes():
            return
        time.sleep(0.005)
    raise TimeoutError(f"no {prompt!r} in {log} within {timeout} s")


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB: PSS shares QEMU's libraries out among the guests."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    return values.get("Rss", 0), values.get("Pss", 0)


def bench_virsh(driver: VmDriver, image: VmImage, domain_type: str) -> float:
    spec = _spec(driver.host)
    files = InstanceFiles.of(driver.host, spec.uuid)
    files.dir.mkdir(parents=True)
    files.dir.chmod(0o711)
    create_overlay(files, image, spec.disk_gib)
    create_config_disk(files, spec, "bench")
    xml = files.dir / "domain.xml"
    xml.write_text(domain_xml(spec, driver.host, image, files, domain_type=domain_type))
    name = f"berth-{driver.host.name}-{spec.uuid[:12]}"
    try:
        t0 = time.perf_counter()
        subprocess.run(["virsh", "-q", "-c", URI, "create", str(xml)], check=True,
                       capture_output=True)
        _wait_prompt(files.serial_log, f"{spec.hostname}# ".encode())
        return time.perf_counter() - t0
    finally:
        subprocess.run(["virsh", "-q", "-c", URI, "destroy", name], capture_output=True)
        shutil.rmtree(files.dir, ignore_errors=True)


def bench_driver(driver: VmDriver) -> dict[str, float]:
    spec = _spec(driver.host)
    files = InstanceFiles.of(driver.host, spec.uuid)
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        status = driver.create(spec)
        out["create() call"] = time.perf_counter() - t0
        _wait_prompt(files.serial_log, f"{spec.hostname}# ".encode())
        out["driver create → prompt"] = time.perf_counter() - t0
        time.sleep(2)  # idle
        rss, pss = _memory_kib(status.pid or 0)
        out["qemu RSS per idle guest (MiB)"] = rss / 1024
        out["qemu PSS per idle guest (MiB)"] = pss / 1024
        t0 = time.perf_counter()
        driver.stop(spec, timeout=30)
        out["graceful stop (ACPI)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        driver.destroy(spec)
        out["destroy"] = time.perf_counter() - t0
    finally:
        driver.destroy(spec)
    return out


def prepare_images() -> tuple[Path, Path]:
    """The tiny image (built once) and the KVM-or-TCG verdict (checked once), under ROOT."""
    ensure_daemons()
    ROOT.mkdir(parents=True, exist_ok=True)
    ROOT.chmod(0o755)
    (ROOT / "images").mkdir(exist_ok=True)
    (ROOT / "images").chmod(0o755)
    build_vm_tiny(ROOT / "images", lambda _m: None)
    detect_virtualization(URI, VmImage.load(ROOT / "images" / "tiny"), ROOT / "virtualization.json",
                          probe_name="berth-bench-kvm-probe")
    return ROOT / "images", ROOT / "virtualization.json"


def run(runs: int = 5, *, panel: bool = True) -> None:
    image_dir, verdict_file = prepare_images()
    image = VmImage.load(image_dir / "tiny")
    verdict = load_verdict(verdict_file)
    assert verdict is not None
    bridge = f"bb{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    state = Path(tempfile.mkdtemp(prefix="state-", dir=ROOT))
    state.chmod(0o755)
    host = HostConfig(name=f"bench{secrets.token_hex(2)}", state_dir=state,
                      image_dir=image_dir, bridge=bridge, gateway=GATEWAY, prefixlen=24)
    driver = VmDriver(host, virtualization=verdict)
    rows: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, state, ignore_errors=True)
        stack.callback(subprocess.run, ["ip", "link", "del", bridge], check=False)
        stack.callback(driver.close)
        berth = stack.enter_context(LiveBerth(image_dir, verdict_file)) if panel else None
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        # One untimed order first: each host worker process connects to libvirt and prepares
        # the host (bridge, daemons, verdict) on its first operation, once per process life.
        if berth is not None:
            for _ in range(2):  # the host worker runs two processes
                berth.order_vm_to_prompt()
        for _ in range(runs):
            # Interleaved, so a slow spell of the shared machine hits every row alike.
            rows.setdefault("virsh create → prompt", []).append(
                bench_virsh(driver, image, verdict.domain_type))
            for key, value in bench_driver(driver).items():
                rows.setdefault(key, []).append(value)
            if berth is not None:
                total = berth.order_vm_to_prompt()
                for phase, seconds in berth.phases.items():
                    rows.setdefault(f"order: {phase}", []).append(seconds)
                rows.setdefault("order via API → prompt", []).append(total)
    base = statistics.median(rows["virsh create → prompt"])
    print(f"virtualization: {verdict.domain_type} — {verdict.reason}")
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared: figures are noisy)")
    print(f"{'row':34} {'median':>9} {'min':>9} {'max':>9} {'vs virsh':>9}")
    for key, values in rows.items():
        med = statistics.median(values)
        vs = f"{(med / base - 1) * 100:+.1f}%" if "prompt" in key and "virsh" not in key else ""
        unit = "" if "MiB" in key else " s"
        print(f"{key:34} {med:8.3f}{unit:2}{min(values):8.3f}{unit:2}{max(values):8.3f}{unit:2}"
              f"{vs:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-panel", action="store_true",
                        help="skip the live panel (no PostgreSQL/Redis needed): driver rows only")
    args = parser.parse_args()
    run(args.runs, panel=not args.no_panel)


if __name__ == "__main__":
    main()
