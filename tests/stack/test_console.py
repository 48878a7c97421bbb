"""Issue 8's consoles on the live stack, with real containers: many viewers of one console,
scrollback then live with nothing lost or doubled while output flows, resize reaching the
pty, a flood that neither stalls other consoles nor grows memory, and output that survives
restarts of the host agent and of the web server (the browser resumes where it was)."""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from websockets.sync.client import connect

from panel.hosts.tasks import reconcile_hosts
from panel.instances.models import Instance
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, UserFactory
from tests.stack.conftest import destroy_instances
from tests.stack.helpers import EventStream, session_headers
from workers import console_streams

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")
NUMBERED = re.compile(rb"^N(\d+)\r$", re.M)


class Viewer:
    """A console client as static/js/console.js is: renders output bytes, follows cursor
    messages and, with ``reconnect``, comes back after the socket closes asking to resume."""

    def __init__(self, url: str, headers, *, reconnect: bool = False):
        self.url, self.headers, self.reconnect = url, headers, reconnect
        self.data = bytearray()
        self.controls: list[dict] = []
        self.resume: console_streams.ResumePoint | None = None
        self.connections = 0
        self.lock = threading.Condition()
        self.stopped = False
        self.ws = self._connect()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _connect(self):
        url = self.url
        if self.resume is not None:
            url += ("&" if "?" in url else "?") + f"resume={self.resume}"
        ws = connect(url, additional_headers=self.headers, open_timeout=10, max_size=None)
        self.connections += 1
        return ws

    def _take(self, message) -> None:
        with self.lock:
            if isinstance(message, bytes):
                self.data += message
                if self.resume is not None:
                    self.resume = console_streams.ResumePoint(self.resume.boot, self.resume.offset + len(message))
            else:
                control = json.loads(message)
                self.controls.append(control)
                if control["type"] == "cursor":
                    self.resume = console_streams.ResumePoint.parse(control["resume"])
                elif control["type"] == "reset":
                    self.data.clear()
                    self.resume = None
            self.lock.notify_all()

    def _read(self) -> None:
        while True:
            try:
                for message in self.ws:
                    self._take(message)
            except Exception:
                pass
            if self.stopped or not self.reconnect:
                return
            while not self.stopped:  # the web server may be restarting: keep trying
                try:
                    self.ws = self._connect()
                    break
                except Exception:
                    time.sleep(0.2)

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def resize(self, cols: int, rows: int) -> None:
        self.ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def wait_for(self, marker: bytes, timeout: float = 15, start: int = 0) -> int:
        """Wait until ``marker`` shows up after ``start``; return where it ends."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while (at := self.data.find(marker, start)) < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{marker!r} not seen; got {bytes(self.data[-300:])!r}")
                self.lock.wait(left)
            return at + len(marker)

    def run(self, command: str, timeout: float = 15) -> str:
        """Type ``command``; return its output (the marker appears only once it has run)."""
        nonce = secrets.token_hex(4)
        with self.lock:
            start = len(self.data)
        self.send(f"{command}; echo @@{nonce}$((6*7))@@\r".encode())
        end = self.wait_for(f"@@{nonce}42@@".encode(), timeout, start)
        with self.lock:
            text = ANSI.sub(b"", bytes(self.data[start:end])).decode(errors="replace")
        echoed = text.rfind(f"echo @@{nonce}$((6*7))@@")
        return text[echoed:].split("\n", 1)[-1].rsplit("\n", 1)[0] if echoed >= 0 else text

    def numbers(self) -> list[int]:
        with self.lock:
            return [int(n) for n in NUMBERED.findall(bytes(self.data))]

    def gaps(self) -> list[int]:
        """Bytes each "gap" control said were skipped."""
        with self.lock:
            return [c["skipped_bytes"] for c in self.controls if c["type"] == "gap"]

    def first_offset(self) -> int:
        """Where the first cursor said the first byte stands in its boot."""
        with self.lock:
            first = next(c for c in self.controls if c["type"] == "cursor")
        return console_streams.ResumePoint.parse(first["resume"]).offset

    def kinds(self) -> list[str]:
        with self.lock:
            return [c["type"] for c in self.controls]

    def close(self) -> None:
        self.stopped = True
        self.ws.close()
        self.thread.join(timeout=5)


def numbered_lines(count: int, pause_us: int) -> str:
    return (f"i=0; while [ $i -lt {count} ]; do echo N$i; i=$((i+1)); usleep {pause_us}; done; "
            "echo @@LINES$((6*7))@@")


def assert_every_line_once(viewer: Viewer, count: int, *, from_start: bool = True) -> None:
    numbers = viewer.numbers()
    assert numbers, bytes(viewer.data[-300:])
    first = 0 if from_start else numbers[0]
    assert numbers == list(range(first, count)), _describe(numbers, first, count)


def _describe(numbers: list[int], first: int, count: int) -> str:
    missing = sorted(set(range(first, count)) - set(numbers))
    doubled = sorted({n for n in numbers if numbers.count(n) > 1})
    return f"{len(numbers)} lines, missing {missing[:10]}..., doubled {doubled[:10]}..."


@pytest.fixture
def console(stack):
    """A running container ordered by its owner; its console URL and the owner's and an
    admin's session headers."""
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    admin = session_headers(UserFactory(is_staff=True), stack.url)
    events = EventStream(stack.ws_url, headers)
    try:
        instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"],
                                  hostname=f"c{secrets.token_hex(3)}")
        events.wait_state(instance.pk, "running", timeout=30)
    finally:
        events.close()
    url = f"{stack.ws_url}ws/instances/{instance.pk}/console/"
    yield {"instance": instance, "url": url, "owner": headers, "admin": admin, "rows": rows}
    # Remove the containers and let the panel take in the agent's reports before the test
    # database is flushed: a report applied during the flush can deadlock with it.
    destroy_instances(stack)
    reconcile_hosts()  # in case the agent (restarted by some of these tests) missed the deaths
    _wait_until(lambda: not Instance.objects.filter(host__name=stack.host_name, state="running").exists(),
                15, "the panel did not take in the removed containers")


def test_two_viewers_see_the_same_console_and_neither_breaks_the_other(stack, console):
    owner = Viewer(console["url"], console["owner"])
    admin = Viewer(console["url"], console["admin"])
    try:
        assert owner.run("echo one-$((1+1))").strip() == "one-2"
        admin.wait_for(b"one-2")  # the other viewer saw that command and its output
        assert admin.run("echo two-$((2+1))").strip() == "two-3"
        owner.wait_for(b"two-3")
        assert owner.run("hostname").strip() == console["instance"].hostname
        assert "error" not in owner.kinds() + admin.kinds()
    finally:
        owner.close()
        admin.close()


def test_a_read_only_viewer_sees_everything_and_types_nothing(stack, console):
    owner = Viewer(console["url"], console["owner"])
    watcher = Viewer(console["url"] + "?mode=ro", console["admin"])
    try:
        watcher.send(b"touch /root/typed-by-watcher\r")
        owner.run("echo visible")
        watcher.wait_for(b"visible")
        assert owner.run("ls /root/typed-by-watcher 2>&1").strip().endswith("No such file or directory")
        assert "error" in watcher.kinds()
    finally:
        owner.close()
        watcher.close()


def test_viewers_joining_while_lines_flow_get_scrollback_then_live_each_line_once(stack, console):
    """More output than the scrollback keeps: late viewers start later, but every viewer has
    a contiguous run of lines up to the last one, nothing missing or doubled in between."""
    count = 20000
    first = Viewer(console["url"], console["owner"])
    joined = []
    try:
        first.run("true")
        first.send(f"{numbered_lines(count, 100)}\r".encode())
        for lines in (1000, 5000, 10000, 17000, 19500):  # the last ones after 128 KiB of output
            _wait_lines(first, lines, timeout=60)
            joined.append(Viewer(console["url"], console["owner"]))
        for viewer in [first, *joined]:
            viewer.wait_for(b"@@LINES42@@", timeout=120)
        assert_every_line_once(first, count)
        for viewer in joined:
            assert_every_line_once(viewer, count, from_start=False)
            assert "gap" not in viewer.kinds() and "reset" not in viewer.kinds()
        assert joined[-1].numbers()[0] > 0, "the last viewer joined after the scrollback was trimmed"
    finally:
        for viewer in [first, *joined]:
            viewer.close()


def test_a_resize_from_the_browser_reaches_the_pty(stack, console):
    viewer = Viewer(console["url"], console["owner"])
    try:
        viewer.resize(cols=123, rows=45)
        assert viewer.run("stty size").strip() == "45 123"
        viewer.resize(cols=80, rows=24)
        assert viewer.run("stty size").strip() == "24 80"
    finally:
        viewer.close()


def test_output_is_relayed_byte_for_byte(stack, console):
    """Multi-byte characters split wherever chunks happen to end, escape sequences, raw
    bytes that are not UTF-8 at all: what the browser gets is exactly what the program wrote."""
    viewer = Viewer(console["url"], console["owner"])
    try:
        viewer.run("true")
        start = len(viewer.data)
        viewer.run(r"printf 'caf\303\251 \033[1;31mred\033[0m \377\376\n'")
        assert "caf\u00e9 \x1b[1;31mred\x1b[0m ".encode() + b"\xff\xfe\r\n" in viewer.data[start:]
        start = len(viewer.data)
        viewer.run(r"i=0; while [ $i -lt 3000 ]; do printf '\303\251\342\202\254\360\237\230\200'; "
                   r"i=$((i+1)); done; echo")
        run = bytes(viewer.data[start:])
        assert ("\u00e9\u20ac\U0001f600" * 3000).encode() in run  # 27 kB of 2-, 3- and 4-byte characters
    finally:
        viewer.close()


def test_a_flood_neither_stalls_other_consoles_nor_grows_memory(stack, console):
    """`yes` at full speed in one container, a viewer of it that stops reading: another
    container's console keeps answering, the slow viewer catches up, and the web server, the
    agent and the scrollback stay bounded."""
    other = _second_container(stack, console)
    flooded = Viewer(console["url"], console["owner"])
    calm = Viewer(other, console["owner"])
    web, agent = stack.procs["web"].pid, stack.procs["agent"].pid
    before = {"web": _rss(web), "agent": _rss(agent)}
    slow = SlowViewer(console["url"], console["owner"])
    try:
        flooded.run("true")
        flooded.send(b"yes\r")
        flooded.wait_for(b"y\r\ny\r\ny\r\n")
        for n in range(5):  # the other console answers at once, again and again
            assert calm.run(f"echo calm-{n}").strip() == f"calm-{n}"
        # Far more than the stalled viewer's socket buffers and queue can hold.
        _wait_until(lambda: len(flooded.data) > 16 * 1024 * 1024, 90, "16 MiB of flood")
        peak = {"web": _rss(web), "agent": _rss(agent)}
        print(f"flood: {len(flooded.data) >> 20} MiB seen by a fast viewer; RSS {before} -> {peak}")
        flooded.send(b"\x03")
        assert flooded.run("echo after-the-flood").strip() == "after-the-flood"
        assert calm.run("echo still-here").strip() == "still-here"

        slow.start_reading()
        slow.wait_for(b"after-the-flood", timeout=60)
        print(f"slow viewer: {slow.kinds()} gaps {slow.gaps()} data {len(slow.data)}")
        # The stalled viewer is told what it missed, and every byte of the console is either
        # rendered or counted in a gap: nothing is silently lost, nothing doubled.
        assert slow.gaps() and sum(slow.gaps()) > 1024 * 1024, slow.controls
        assert "reset" not in slow.kinds()
        assert slow.first_offset() + len(slow.data) + sum(slow.gaps()) == slow.resume.offset
        _wait_until(lambda: slow.resume == flooded.resume, 30, "the slow viewer caught up")
        with flooded.lock, slow.lock:
            assert flooded.data.endswith(slow.data[-16 * 1024:])  # the same newest output
        assert _stream_bytes(console["instance"]) <= 128 * 1024 + 64 * 1024
        # Bounded: what a flood and a stalled viewer cost is not a function of the flood.
        assert peak["web"] - before["web"] < 64 * 1024 * 1024, (before, peak)
        assert peak["agent"] - before["agent"] < 64 * 1024 * 1024, (before, peak)
    finally:
        for viewer in (flooded, calm, slow):
            viewer.close()


class SlowViewer(Viewer):
    """Connects, then does not read at all (its TCP window fills) until ``start_reading``.

    Without permessage-deflate: `yes` compresses about a thousandfold, so a compressed flood
    of 16 MiB fits in the sockets' buffers and the server never sees this viewer fall behind;
    uncompressed it stands for a slow link (or output that does not compress)."""

    def __init__(self, url: str, headers):
        self.reading = threading.Event()
        super().__init__(url, headers)

    def _connect(self):
        host, port = urlsplit(self.url).hostname, urlsplit(self.url).port
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills quickly
        sock.connect((host, port))
        self.connections += 1
        return connect(self.url, sock=sock, additional_headers=self.headers, open_timeout=10,
                       max_size=None, max_queue=1, compression=None)

    def _read(self) -> None:
        self.reading.wait()
        super()._read()

    def start_reading(self) -> None:
        self.reading.set()

    def close(self) -> None:
        self.reading.set()
        super().close()


def test_output_survives_agent_restarts_without_gap_or_duplicate(stack, console):
    """The agent restarted twice (stopped, then killed) while lines flow: a viewer connected
    all along and one that joins afterwards each get every line exactly once."""
    count = 6000
    viewer = Viewer(console["url"], console["owner"])
    try:
        viewer.run("true")
        viewer.send(f"{numbered_lines(count, 1000)}\r".encode())
        _wait_lines(viewer, 500)
        stack.restart("agent")
        # More lines through the next agent; all there are, when the container printed the
        # rest while this viewer caught up (under load it can lag the console by seconds,
        # and the next agent then attaches at the end of the output).
        _wait_lines(viewer, min(len(viewer.numbers()) + 500, count), timeout=60)
        stack.stop("agent", sig=signal.SIGKILL)
        time.sleep(0.5)
        stack.start("agent", *stack.commands["agent"])
        viewer.wait_for(b"@@LINES42@@", timeout=120)
        assert_every_line_once(viewer, count)
        assert viewer.kinds().count("gap") == 0
        late = Viewer(console["url"], console["owner"])
        late.wait_for(b"@@LINES42@@")
        assert_every_line_once(late, count, from_start=False)
        late.close()
    finally:
        viewer.close()


class SilentLibvirt:
    """A libvirt socket that takes connections and never answers: libvirtd busy for good
    (or restarting). A libvirt client blocks on it as long as it waits for libvirtd."""

    def __init__(self, path: Path):
        self.path = path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()
        self.path.unlink(missing_ok=True)


def test_a_console_resumes_at_once_after_an_agent_restart_while_libvirt_does_not_answer(stack, console, tmp_path):
    """The agent restarts while libvirtd is slow to answer (busy with other hosts' VMs, or
    restarting): a container's console does not wait for libvirt, nothing is lost or doubled,
    and the agent still stops promptly."""
    count = 4000
    argv, env = stack.commands["agent"]
    silent = SilentLibvirt(tmp_path / "libvirt-sock")
    viewer = Viewer(console["url"], console["owner"])
    try:
        viewer.run("true")
        viewer.send(f"{numbered_lines(count, 4000)}\r".encode())  # 16 s at least
        _wait_lines(viewer, 100)
        stack.stop("agent")
        assert len(viewer.numbers()) < count  # the rest comes out while no agent runs...
        stack.start("agent", argv, {**env, "BERTH_LIBVIRT_URI": silent.uri})
        viewer.wait_for(b"@@LINES42@@", timeout=60)  # ...and through the next one
        assert _run_once_attached(viewer, "echo typed-$((3*3))") == "typed-9"  # input too
        started = time.monotonic()
        stack.stop("agent", timeout=30)
        assert time.monotonic() - started < 10, "the agent waited for libvirt to stop"
        stack.start("agent", argv, env)
        # The agent as it was (the fixture's cleanup needs it to see the container go).
        assert _run_once_attached(viewer, "echo back-$((2+2))") == "back-4"
        assert_every_line_once(viewer, count)
        assert "gap" not in viewer.kinds() and "reset" not in viewer.kinds()
    finally:
        viewer.close()
        if stack.commands["agent"] != (argv, env):
            stack.stop("agent")
            stack.start("agent", argv, env)
        silent.close()


def test_a_browser_resumes_after_the_web_server_restarts(stack, console):
    count = 5000
    viewer = Viewer(console["url"], console["owner"], reconnect=True)
    try:
        viewer.run("true")
        viewer.send(f"{numbered_lines(count, 1000)}\r".encode())
        _wait_lines(viewer, 500)
        stack.restart("web")
        viewer.wait_for(b"@@LINES42@@", timeout=120)
        assert viewer.connections >= 2
        assert_every_line_once(viewer, count)
        assert "reset" not in viewer.kinds() and "gap" not in viewer.kinds()
        assert viewer.run("echo typed-after-reconnect").strip() == "typed-after-reconnect"
    finally:
        viewer.close()
        stack.wait_http()


def test_a_stranger_and_a_wrong_mode_cannot_open_the_console(stack, console):
    stranger = session_headers(CustomerFactory().user, stack.url)
    for url, headers in ((console["url"], stranger), (console["url"] + "?mode=sudo", console["owner"])):
        with pytest.raises(Exception, match="403"):
            connect(url, additional_headers=headers, open_timeout=10)


def _second_container(stack, console) -> str:
    customer = console["instance"].customer
    events = EventStream(stack.ws_url, console["owner"])
    try:
        instance = order_instance(customer=customer, plan=console["rows"]["plan"],
                                  image=console["rows"]["image"], hostname="calm")
        events.wait_state(instance.pk, "running", timeout=30)
    finally:
        events.close()
    return f"{stack.ws_url}ws/instances/{instance.pk}/console/"


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _wait_lines(viewer: Viewer, at_least: int, timeout: float = 30) -> None:
    _wait_until(lambda: len(viewer.numbers()) >= at_least, timeout, f"{at_least} lines")


def _run_once_attached(viewer: Viewer, command: str, timeout: float = 30) -> str:
    """``command``'s output, typed again until an answer comes: what a viewer types while a
    starting agent has not attached the console yet is lost (so ``command`` must be harmless
    to run twice)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return viewer.run(command, timeout=5).strip()
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stream_bytes(instance: Instance) -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        entries = client.xrange(console_streams.output_stream(instance.host.name, instance.uuid.hex))
    finally:
        client.close()
    return sum(len(fields[b"d"]) for _, fields in entries)
