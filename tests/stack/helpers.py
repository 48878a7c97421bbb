"""Clients for the live stack: the events and console WebSockets, and host-side leak checks."""

from __future__ import annotations

import json
import queue
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path

from django.test import Client
from websockets.sync.client import connect

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


def session_headers(user, origin: str) -> list[tuple[str, str]]:
    client = Client()
    client.force_login(user)
    return [("Cookie", f"sessionid={client.cookies['sessionid'].value}"), ("Origin", origin.rstrip("/"))]


class EventStream:
    """Collects /ws/events/ messages in a thread; wait_for() blocks until one matches."""

    def __init__(self, ws_url: str, headers):
        self.ws = connect(ws_url + "ws/events/", additional_headers=headers, open_timeout=10)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.events.put(json.loads(message))
        except Exception:
            pass

    def wait_state(self, instance_id: int, state: str, timeout: float = 20) -> list[str]:
        """Wait until the instance reaches ``state``; return the states seen so far, in the
        order of their versions (events may arrive out of order, as the browser also handles)."""
        deadline = time.monotonic() + timeout
        while True:
            states = {e["instance"]["version"]: e["instance"]["state"] for e in self.seen
                      if e["type"] == "instance.state" and e["instance"]["id"] == instance_id}
            if states and states[max(states)] == state:
                return [states[v] for v in sorted(states)]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"state {state} not seen; events: {self.seen}")
            try:
                self.seen.append(self.events.get(timeout=left))
            except queue.Empty:
                continue

    def close(self) -> None:
        self.ws.close()


class ConsoleClient:
    """A console viewer: binary frames are output, text frames are JSON control messages."""

    def __init__(self, url: str, headers=None):
        self.ws = connect(url, additional_headers=headers or [], open_timeout=10, max_size=None)
        self.buffer = b""
        self.controls: list[dict] = []

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{marker!r} not seen; got {self.buffer[-500:]!r}")
            try:
                message = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            if isinstance(message, str):
                self.controls.append(json.loads(message))
            else:
                self.buffer += message
        before, _, self.buffer = self.buffer.partition(marker)
        return before

    def run(self, command: str, timeout: float = 10) -> str:
        """Type ``command``, return its output (the marker only appears once it has run)."""
        nonce = secrets.token_hex(4)
        self.ws.send(f"{command}; echo @@{nonce}$((6*7))@@\r".encode())
        output = self.read_until(f"@@{nonce}42@@".encode(), timeout)
        text = ANSI.sub(b"", output).decode(errors="replace")
        # Drop everything up to the echo of the typed line (banner, scrollback, prompt).
        echoed = text.rfind(f"echo @@{nonce}$((6*7))@@")
        return text[echoed:].split("\n", 1)[-1] if echoed >= 0 else text

    def wait_for_shell(self, timeout: float) -> None:
        """Type a probe until a shell runs it whole. A new viewer gets the scrollback first, so
        a prompt in it may be an earlier boot's; and what is typed while a guest boots is
        partly lost (a full CI run saw "ech" of a command vanish after a restore's reboot)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no shell ran a probe in {timeout} s; got {self.buffer[-500:]!r}")
            try:
                if "shell2ready" in self.run("echo shell$((1+1))ready", timeout=min(10.0, left)):
                    return
            except TimeoutError:
                continue

    def close(self) -> None:
        self.ws.close()


def host_leftovers(uuid: str, veth: str) -> dict[str, list[str]]:
    """Every trace of a container on the host: processes' cgroups, mounts, veth, dirs."""
    found: dict[str, list[str]] = {}
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if uuid in line]
    if mounts:
        found["mounts"] = mounts
    links = subprocess.run(["ip", "-o", "link", "show", veth], capture_output=True, text=True)
    if links.returncode == 0:
        found["veth"] = [veth]
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/**/{uuid}") if p.is_dir()]
    if cgroups:
        found["cgroups"] = cgroups
    return found
