"""Tools the fault tests cause real faults with: a Redis of their own to restart, a TCP proxy
in front of PostgreSQL to cut, an image whose config blocks (a worker stuck mid-create), and
/proc lookups to find and kill exactly the process that is stuck.

Nothing here touches the machine's shared Redis (6379) or PostgreSQL (5432) service: other
engineers' tests use them at the same time.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from tests.stack.launcher import free_port


def wait_until(predicate: Callable[[], object], timeout: float, what: str, logs: Callable[[], str] = str):
    """Poll ``predicate`` until it returns something true; fail with ``what`` and the logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout:g} s)\n{logs()}")
        time.sleep(0.2)


class LogMark:
    """A point in a stack process's log; ``since()`` is what it wrote after that point."""

    def __init__(self, stack, name: str):
        self.path = Path(stack.log_dir) / f"{name}.log"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


# --- processes ---------------------------------------------------------------------------

def group_pids(leader: int) -> list[int]:
    """Every process in ``leader``'s process group (a Celery worker and its pool children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # field 5 of stat: the process group
            pids.append(int(entry.name))
    return pids


def blocked_opening_fifo(leader: int) -> list[int]:
    """Processes of the group waiting in open() for a FIFO's writer (the blocking image)."""
    found = []
    for pid in group_pids(leader):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/wchan").read_text().strip() == "wait_for_partner":
                found.append(pid)
    return found


# --- an image that stops a create in the middle ------------------------------------------

class BlockingImage:
    """A copy of the busybox image whose ``image.json`` is a FIFO: the container driver makes
    the instance's directory, disk and cgroup settings, then blocks reading the image's config
    — a worker stuck in the middle of a create, for as long as the test wants."""

    def __init__(self, image_dir: Path, name: str):
        self.source = image_dir / "busybox"
        self.path = image_dir / name
        self.name = name
        shutil.copytree(self.source, self.path, symlinks=True)
        self.config = self.path / "image.json"
        self.config.unlink()
        os.mkfifo(self.config, 0o644)

    def unblock_future_reads(self) -> None:
        """Later reads get the real config. A read already waiting stays blocked: it waits on
        the FIFO's inode, which is no longer in the directory (only a kill ends it)."""
        tmp = self.path / "image.json.tmp"
        shutil.copyfile(self.source / "image.json", tmp)
        os.replace(tmp, self.config)


# --- Redis of our own --------------------------------------------------------------------

class PrivateRedis:
    """redis-server on a free port with the persistence production needs (appendonly), so a
    restart is real for the processes under test and invisible to everyone else."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_until(lambda: _pings(client), 10, "private Redis did not start")
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- a database that goes away ------------------------------------------------------------

class CuttableProxy:
    """A TCP proxy in front of PostgreSQL. ``cut()`` drops every open connection and refuses
    new ones (as a database that crashed or a network that broke); ``restore()`` listens again
    on the same port. Only the processes pointed at the proxy see the outage."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._selector = selectors.DefaultSelector()
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="pg-proxy", daemon=True)
        self.restore()
        self._thread.start()

    def url(self, database: str, user: str = "root") -> str:
        return f"postgres://{user}@127.0.0.1:{self.port}/{database}"

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.setblocking(False)
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._wake()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for pair in self._pairs:
                for sock in pair:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            self._pairs.clear()
        self._wake()

    def close(self) -> None:
        self.cut()
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stopped.is_set():
            for key, _ in self._selector.select(timeout=1):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                with self._lock:
                    if key.data == "accept":
                        self._accept()
                    elif key.data is not None:
                        self._pump(key.fileobj, key.data)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, OSError, AttributeError):
            return
        upstream = socket.create_connection(self.target)
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, peer)
        self._pairs.append((client, upstream))

    def _pump(self, sock: socket.socket, peer: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        for pair in [p for p in self._pairs if sock in p]:
            self._pairs.remove(pair)
            for s in pair:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(s)
                s.close()


# --- the billing API, as a client outside the panel uses it ----------------------------

def api_client(stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url.rstrip("/") + "/api/v1/", timeout=30,
                        headers={"Authorization": f"Bearer {key}"})
