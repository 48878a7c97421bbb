"""Starts the real thing outside of pytest too (the stack fixture and ``bench/`` use it):
uvicorn (ASGI), the panel worker (and beat if asked), and a throwaway host (its own name,
bridge, subnet, state dir, uid range) with its host worker and agent, against a given
PostgreSQL database and Redis. Each process runs in its own session with its output in
``<root>/<name>.log``; ``Stack.restart`` restarts one of them with the same command.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

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
        self.commands[name] = (argv, env)
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

    def restart(self, name: str) -> None:
        """Start a stopped (or killed) process again with the command it was started with."""
        self.stop(name)
        self.start(name, *self.commands[name])

    def wait_http(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "login/", timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"web server did not start:\n{self.all_logs()}")

    def host_driver(self, kind: str = "container"):
        return get_driver(kind, load_host_settings(self.host_env).host)


@contextlib.contextmanager
def launch(*, database_url: str, redis_url: str, secret_key: str,
           prepare: Callable[[Path, Path], None], sweep: Callable[[Stack], None],
           stack_class: type[Stack] = Stack, beat: bool = False,
           panel_env: dict[str, str] | None = None, web_args: list[str] | None = None,
           log_level: str = "INFO") -> Iterator[Stack]:
    """Run a stack until the block ends, then stop it and ``sweep`` what its host made.
    ``prepare(image_dir, state_dir)`` puts the images the host needs in place first."""
    # Not pytest's tmp dir: it is 0700, and container root (an unprivileged host uid) and QEMU
    # must be able to reach the state and image dirs.
    root = Path(tempfile.mkdtemp(prefix="berth-stack-", dir="/var/tmp"))
    root.chmod(0o711)
    image_dir = root / "images"
    image_dir.mkdir()
    prepare(image_dir, root / "host")
    suffix = secrets.token_hex(3)
    net = 200 + secrets.randbelow(50)
    host_env = {
        "BERTH_HOST_NAME": f"t{suffix}",
        "BERTH_REDIS_URL": redis_url,
        "BERTH_STATE_DIR": str(root / "host"),
        "BERTH_IMAGE_DIR": str(image_dir),
        "BERTH_BRIDGE": f"bt{suffix}",
        "BERTH_GATEWAY": f"10.{net}.{secrets.randbelow(250)}.1",
        "BERTH_PREFIXLEN": "24",
        "BERTH_UID_BASE": str(300_000_000 + secrets.randbelow(900) * 65536 * 64),  # + 64 ranges < 2^32
        "BERTH_UID_SLOTS": "64",
        "BERTH_HEARTBEAT_SECONDS": "1",
    }
    panel_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secret_key,
        "BERTH_IMAGE_DIR": str(image_dir),
        "CONN_MAX_AGE": "0",
        "LOG_LEVEL": log_level,
        # One billing token drives the soak's steady load beside its orders: production's
        # per-token limit (1200/min) is tested on its own (tests/panel/test_security_web.py).
        "BERTH_API_RATE": "12000/min",
        **(panel_env or {}),
    }
    port = free_port()
    stack = stack_class(url=f"http://127.0.0.1:{port}/", host_env=host_env,
                        network=host_env["BERTH_GATEWAY"].rsplit(".", 1)[0] + ".0/24",
                        image_dir=image_dir, log_dir=root)
    celery = str(VENV_BIN / "celery")
    host_proc_env = {**os.environ, **host_env, "LOG_LEVEL": log_level}
    try:
        stack.start("web", [str(VENV_BIN / "uvicorn"), "panel.asgi:application", "--host", "127.0.0.1",
                            "--port", str(port), "--ws", "websockets-sansio", "--lifespan", "off",
                            *(web_args or [])], panel_env)
        stack.start("panel-worker", [celery, "-A", "panel", "worker", "-Q", "panel", "-n",
                                     f"panel-{suffix}@%h", "--concurrency", "2", "--loglevel", "INFO"], panel_env)
        if beat:
            # Its schedule file goes to the stack's own dir, away from the checkout's var/.
            stack.start("beat", [celery, "-A", "panel", "beat"],
                        {**panel_env, "BERTH_VAR_DIR": str(root / "var")})
        stack.start("host-worker", [celery, "-A", "workers.hostworker", "worker", "-Q",
                                    f"host.{host_env['BERTH_HOST_NAME']}", "-n", f"host-{suffix}@%h",
                                    "--concurrency", "2", "--loglevel", "INFO"], host_proc_env)
        stack.start("agent", [str(VENV_BIN / "python"), "-m", "workers.agent"], host_proc_env)
        stack.wait_http()
        yield stack
    finally:
        for name in list(stack.procs):
            stack.stop(name)
        sweep(stack)
        if os.environ.get("BERTH_TEST_SHOW_LOGS"):
            print(stack.all_logs())
        shutil.rmtree(root, ignore_errors=True)


def destroy_containers(stack: Stack) -> None:
    """Destroy every container of the stack's host (with the spec it was created with)."""
    driver = stack.host_driver("container")
    for status in driver.list_instances():
        spec_path = Path(stack.host_env["BERTH_STATE_DIR"]) / "containers" / status.uuid / "spec.json"
        try:
            driver.destroy(InstanceSpec.from_dict(json.loads(spec_path.read_text())))
        except Exception as exc:  # keep sweeping the rest
            print(f"sweep: {status.uuid}: {exc}")
