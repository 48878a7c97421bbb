"""`make run`: migrate, seed, then run every Berth process in the foreground.

Starts the web server (uvicorn, ASGI: HTTP + WebSockets), the panel worker, beat, and for each
local host its host worker and agent. Output is prefixed by process name. Ctrl-C stops them
all (each runs in its own process group, so nothing is orphaned), then shuts the local hosts'
instances down cleanly so no container, veth or domain is left behind.

    HOSTS=3 make run    # the local machine as three hosts, each with its own bridge and pool

Each local host is enrolled like a remote one: its worker and agent reach Redis as the host's
own ACL user (panel/hosts/credentials.py), with a credential issued afresh at every start
(the panel keeps only hashes, so there is no old one to reuse). HOST_NETWORK (default
10.77.0.0/24) and HOST_BRIDGE_PREFIX (default berth) place host i on the i-th next /24 and
bridge <prefix><i>, so two checkouts on one machine can keep apart.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
COLORS = ["36", "33", "35", "32", "34", "31", "96", "93"]
# Host workers must be root (namespaces, cgroups, libvirt); Celery warns about root at every
# start. The production units (deploy/) run the panel worker as its own user.
QUIET_ROOT = {"PYTHONWARNINGS": "ignore::celery.exceptions.SecurityWarning"}


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        self.name, self.argv = name, argv
        self.env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop them
        )

    def signal_group(self, sig: int) -> None:
        """Signal the whole group: a worker's pool children outlive a main process that died."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)


def django_setup() -> None:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
    import django  # noqa: PLC0415

    django.setup()


def prepare(host_count: int) -> list[dict[str, str]]:
    """Migrate, seed, enrol the local hosts with fresh credentials; return each host's environment."""
    import ipaddress  # noqa: PLC0415

    from django.conf import settings  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415

    from panel.hosts.credentials import CredentialError, issue_credential  # noqa: PLC0415
    from panel.hosts.models import Host  # noqa: PLC0415
    from panel.hosts.services import host_environment, register_host  # noqa: PLC0415

    first = ipaddress.IPv4Network(os.environ.get("HOST_NETWORK", "10.77.0.0/24"))
    bridge_prefix = os.environ.get("HOST_BRIDGE_PREFIX", "berth")
    call_command("migrate", verbosity=0)
    call_command("seed", host_network=str(first), bridge=f"{bridge_prefix}0")
    envs = []
    for i in range(host_count):
        if i == 0:
            host = Host.objects.get(name=settings.BERTH_HOST_NAME)
        else:
            network = ipaddress.IPv4Network((int(first.network_address) + i * first.num_addresses, first.prefixlen))
            host = register_host(
                name=f"{settings.BERTH_HOST_NAME}-{i + 1}",
                network=str(network),
                bridge=f"{bridge_prefix}{i}",
                uid_base=1_000_000 + i * 100_000_000,
            )
        try:
            secret = issue_credential(host, source="system")
        except CredentialError as exc:
            print(f"[hosts] {host.name} shares the panel's Redis login: {exc}", flush=True)
            secret = None
            Host.objects.filter(pk=host.pk).update(credential_hash="")
            host.credential_hash = ""
        envs.append(host_environment(host, secret=secret))
        print(f"[hosts] {host.name}: bridge {host.bridge}, pool {host.ip_pool.network}", flush=True)
    from panel.instances.services.host_shutdown import resume_after_restart  # noqa: PLC0415

    for env in envs:
        for instance in resume_after_restart(env["BERTH_HOST_NAME"]):
            print(f"[resume] {instance.hostname} will start again", flush=True)
    return envs


def shutdown_hosts(envs: list[dict[str, str]]) -> None:
    """Stop the local hosts' instances (recorded as stopped) and remove their bridges."""
    from panel.instances.services.host_shutdown import shutdown_local_host  # noqa: PLC0415

    for env in envs:
        for line in shutdown_local_host(env):
            print(f"[shutdown] {line}", flush=True)


def main() -> int:
    host_count = int(os.environ.get("HOSTS", "1"))
    port = os.environ.get("PORT", "8000")
    django_setup()
    envs = prepare(host_count)
    py = str(VENV_BIN / "python")
    celery = str(VENV_BIN / "celery")
    procs = [
        Process("web", [str(VENV_BIN / "uvicorn"), "panel.asgi:application", "--host", "127.0.0.1",
                        "--port", port, "--ws", "websockets-sansio", "--lifespan", "off"]),
        Process("panel-worker", [celery, "-A", "panel", "worker", "-Q", "panel", "-n", "panel@%h",
                                 "--concurrency", "2", "--loglevel", "WARNING"], QUIET_ROOT),
        Process("beat", [celery, "-A", "panel", "beat", "--loglevel", "WARNING"]),
    ]
    for env in envs:
        name = env["BERTH_HOST_NAME"]
        procs.append(Process(f"host-worker:{name}", [
            celery, "-A", "workers.hostworker", "worker", "-Q", f"host.{name}", "-n", f"host.{name}@%h",
            "--concurrency", "2", "--loglevel", "WARNING",
            # These need shared keys and channels a host's Redis user may not touch.
            "--without-gossip", "--without-mingle", "--without-heartbeat"], {**env, **QUIET_ROOT}))
        procs.append(Process(f"agent:{name}", [py, "-m", "workers.agent"], env))

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    sel = selectors.DefaultSelector()
    width = max(len(p.name) for p in procs)
    for i, proc in enumerate(procs):
        proc.start()
        sel.register(proc.popen.stdout, selectors.EVENT_READ, (proc, COLORS[i % len(COLORS)]))
    announced = False  # the address is printed once the web server answers, not before

    exit_code = 0
    while not stopping:
        if not announced and _accepts(port):
            print(f"\nBerth is running: http://127.0.0.1:{port}/  (Ctrl-C stops everything)\n",
                  flush=True)
            announced = True
        for key, _ in sel.select(timeout=0.5):
            proc, color = key.data
            line = key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                if not stopping:
                    print(f"{proc.name} exited with status {proc.popen.wait()}; stopping Berth.", flush=True)
                    stopping, exit_code = True, 1
                continue
            sys.stdout.write(f"\033[{color}m{proc.name:>{width}} |\033[0m {line.decode(errors='replace')}")
            sys.stdout.flush()

    print("\nStopping Berth…", flush=True)
    for proc in procs:
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        if proc.popen is None:
            continue
        try:
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{proc.name} did not stop in time; killing it.", flush=True)
        proc.signal_group(signal.SIGKILL)  # stragglers in the group (pool children)
        proc.popen.wait()
    shutdown_hosts(envs)
    print("Berth stopped.", flush=True)
    return exit_code


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
