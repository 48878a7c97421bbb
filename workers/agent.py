"""The host agent: the long-lived process on each host.

- heartbeat: capacity and facts to the panel every few seconds;
- console relay: every running instance's console into a Redis stream (scrollback + live for
  any number of viewers), and viewers' input and resizes back to the console;
- watch: power-state changes nobody asked for (a container that exited, a VM powered off from
  inside) reported to the panel at once;
- graphical consoles: on a viewer's request, a VM's loopback VNC port relayed through Redis
  (``workers/vnc_streams.py``), so the web tier never needs to reach the host.

It keeps no state of its own that matters: after a restart it reattaches to every console at
the byte where it stopped. It never sees the panel's database.

    python -m workers.agent
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from redis.exceptions import RedisError

from workers import console_streams, vnc_streams
from workers.config import HostSettings, load_host_settings
from workers.drivers.base import Driver, DriverError, PowerState
from workers.drivers.registry import KINDS, get_driver

logger = logging.getLogger("berth.agent")

SCROLLBACK_BYTES = int(os.environ.get("BERTH_CONSOLE_SCROLLBACK_BYTES", str(128 * 1024)))
MAX_ENTRY_BYTES = 64 * 1024  # console output coalesced into stream entries of at most this
MAX_PENDING_BYTES = 256 * 1024  # output read from a console ahead of Redis
RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0  # reattaching after Redis went away
MAX_INPUT_BACKLOG_BYTES = 1024 * 1024  # viewers' input a console has not taken yet
INPUT_WAIT_SECONDS = 10.0  # input that comes while the console is being (re)attached waits this long
ENDED_SCROLLBACK_SECONDS = 7 * 24 * 3600  # a stopped instance's scrollback stays this long
SCAN_SECONDS = 2.0
USAGE_SECONDS = float(os.environ.get("BERTH_USAGE_SECONDS", "30"))
# A driver's listing that takes longer (libvirtd busy or wedged) is left running and this
# scan goes on without it: the other driver's consoles and reports do not wait for it.
LIST_TIMEOUT_SECONDS = float(os.environ.get("BERTH_AGENT_LIST_TIMEOUT", "20"))
STOP_WAIT_SECONDS = 5.0  # at shutdown, for libvirt to let go of the event watcher


async def in_daemon_thread(fn, *args):
    """``fn(*args)`` in a daemon thread of its own. For calls that can block for as long as
    an outside daemon pleases (libvirt): unlike ``asyncio.to_thread`` such a call neither
    takes a thread of the loop's default executor nor holds up the agent's exit, which
    waits for that executor's threads."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(method, value) -> None:
        if not future.done():
            method(value)

    def call() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting task)
            outcome = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=call, name=getattr(fn, "__name__", "blocking"), daemon=True).start()
    return await future


class StreamLost(Exception):
    """A console's stream vanished from Redis while relaying (Redis restarted without it)."""


class PendingOutput:
    """Console output read but not in Redis yet. Bounded: when Redis is slower than the
    console, the relay stops reading and the console's own buffer (the shim's ring, the
    serial log) holds the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[tuple[int, bytes]] = []
        self.size = 0
        self.ended = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def put(self, offset: int, data: bytes) -> None:
        while self.size >= self.limit:
            self._writable.clear()
            await self._writable.wait()
        self.chunks.append((offset, data))
        self.size += len(data)
        self._readable.set()

    def end(self) -> None:
        self.ended = True
        self._readable.set()

    async def take(self) -> list[tuple[int, bytes]] | None:
        """Everything pending (waits for some); None once the console ended and all is taken."""
        while not self.chunks:
            if self.ended:
                return None
            self._readable.clear()
            await self._readable.wait()
        chunks, self.chunks, self.size = self.chunks, [], 0
        self._writable.set()
        return chunks


def coalesce(chunks: list[tuple[int, bytes]], limit: int) -> list[tuple[int, bytes]]:
    """Adjacent chunks joined into entries of at most ``limit`` bytes (a gap starts a new one)."""
    entries: list[tuple[int, bytearray]] = []
    for offset, data in chunks:
        if entries:
            start, joined = entries[-1]
            if start + len(joined) == offset and len(joined) + len(data) <= limit:
                joined += data
                continue
        entries.append((offset, bytearray(data)))
    return [(offset, bytes(data)) for offset, data in entries]


def process_start(pid: int) -> str:
    """A process's start time (clock ticks since boot): with its pid, unique for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


class ConsoleRelay:
    """Copies one instance's console output into its Redis stream, resuming after restarts.

    Output is read ahead of Redis (at most MAX_PENDING_BYTES): while one XADD is on its way
    the next output piles up and goes as one entry, so a keystroke's echo leaves at once and a
    flood becomes a few large entries. When Redis goes away the relay reattaches, with
    backoff, where the stream stops; when Redis comes back without the stream, from the
    oldest output the console still holds, so the scrollback is rebuilt.
    """

    def __init__(self, agent: Agent, uuid: str, driver: Driver):
        self.agent, self.uuid, self.driver = agent, uuid, driver
        self.key = console_streams.output_stream(agent.host.name, uuid)
        self.session = None
        self.opened = asyncio.Event()  # set while ``session`` is open
        self.attached = False  # a console session was opened at least once
        self.sizes: collections.deque[int] = collections.deque()  # the stream's entries, oldest first
        self.total = 0
        self.retry_delay = RETRY_MIN_SECONDS
        self.input_lock = asyncio.Lock()
        self.input_backlog = 0
        self.inputs: set[asyncio.Task] = set()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"console-{self.uuid}")

    async def _boot_id(self) -> str:
        """Output offsets restart at 0 with each container boot (the shim counts them), but a
        VM's run on for the instance's whole life (they index its serial log)."""
        if self.driver.kind == "vm":
            return "log"
        status = await asyncio.to_thread(self.driver.status, self.uuid)
        pid = status.pid or 0
        return f"{pid}.{process_start(pid)}"

    async def _resume_offset(self, boot: str) -> int:
        """Rebuild the size index from the stream; return where this boot's output stopped."""
        self.sizes.clear()
        self.total = 0
        offset = 0
        async with self.agent.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.key)
            pipe.persist(self.key)  # running again: keep the scrollback for good
            entries, _ = await pipe.execute()
        for _entry_id, fields in entries:
            try:
                entry = console_streams.OutputEntry.from_fields(fields)
            except ValueError:
                continue
            self.sizes.append(len(entry.data))
            self.total += len(entry.data)
            if entry.boot == boot:
                offset = entry.offset + len(entry.data)
        return offset

    async def _append(self, boot: str, chunks: list[tuple[int, bytes]]) -> None:
        async with self.agent.redis.pipeline(transaction=False) as pipe:
            for offset, data in coalesce(chunks, MAX_ENTRY_BYTES):
                fresh = not self.sizes
                self.sizes.append(len(data))
                self.total += len(data)
                while self.total > SCROLLBACK_BYTES and len(self.sizes) > 1:
                    self.total -= self.sizes.popleft()
                # Trimmed in the same command, to the entries that fit the scrollback; and
                # never re-created behind our back: a missing stream means Redis lost it.
                pipe.xadd(self.key, console_streams.OutputEntry(boot, offset, data).fields(),
                          maxlen=len(self.sizes), approximate=False, nomkstream=not fresh)
            results = await pipe.execute()
        if None in results:
            raise StreamLost

    async def _read(self, session, pending: PendingOutput) -> None:
        try:
            while (chunk := await session.read()) is not None:
                offset, data = chunk
                if data:
                    await pending.put(offset, data)
        finally:
            pending.end()

    async def _relay(self) -> None:
        """Attach and copy until the console ends; raises RedisError or StreamLost."""
        boot = await self._boot_id()
        from_offset = await self._resume_offset(boot)
        self.retry_delay = RETRY_MIN_SECONDS
        session = await self.driver.open_console(self.uuid, from_offset=from_offset)
        self.session, self.attached = session, True
        self.opened.set()
        logger.info("console of %s attached at byte %d of boot %s", self.uuid, from_offset, boot)
        pending = PendingOutput(MAX_PENDING_BYTES)
        reader = asyncio.create_task(self._read(session, pending))
        try:
            if await self._boot_id() != boot:
                return  # it restarted meanwhile: end here, the next scan attaches the new boot
            while (chunks := await pending.take()) is not None:
                await self._append(boot, chunks)
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.opened.clear()
            self.session = None
            with contextlib.suppress(Exception):
                await session.close()

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._relay()
                    with contextlib.suppress(RedisError):  # the console ended: keep its last words a while
                        await self.agent.redis.expire(self.key, ENDED_SCROLLBACK_SECONDS)
                    return
                except StreamLost:
                    logger.warning("console stream of %s vanished from Redis; relaying again "
                                   "what the console still holds", self.uuid)
                except RedisError as exc:
                    logger.warning("console relay of %s lost Redis (%s); reattaching in %.1f s",
                                   self.uuid, exc, self.retry_delay)
                    await asyncio.sleep(self.retry_delay)
                    self.retry_delay = min(self.retry_delay * 2, RETRY_MAX_SECONDS)
        except asyncio.CancelledError:
            raise
        except DriverError as exc:
            logger.info("console of %s not available: %s", self.uuid, exc)
        except Exception:
            logger.exception("console relay of %s failed", self.uuid)
        finally:
            self.agent.relay_ended(self)

    def submit(self, message: console_streams.ConsoleInput) -> None:
        """Hand a viewer's input or resize to the console without waiting for it: a console
        that does not read its input must not hold up the others (they share one command
        loop). In order (the lock is fair); dropped beyond MAX_INPUT_BACKLOG_BYTES."""
        size = len(message.data)
        if self.input_backlog + size > MAX_INPUT_BACKLOG_BYTES:
            logger.info("console input to %s dropped: the console is not reading it", self.uuid)
            return
        self.input_backlog += size
        task = asyncio.create_task(self._deliver(message, size))
        self.inputs.add(task)
        task.add_done_callback(self.inputs.discard)

    async def _deliver(self, message: console_streams.ConsoleInput, size: int) -> None:
        try:
            async with self.input_lock:
                if self.session is None:
                    # Attaching (the agent just started) or reattaching (Redis came back):
                    # what a viewer typed meanwhile goes in once the console is open.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.opened.wait(), INPUT_WAIT_SECONDS)
                session = self.session
                if session is None:
                    logger.info("console input to %s dropped: the console did not open", self.uuid)
                    return
                if message.kind == "i":
                    await session.write(message.data)
                else:
                    await session.resize(message.rows, message.cols)
        except Exception as exc:
            logger.info("console input to %s failed: %s", self.uuid, exc)
        finally:
            self.input_backlog -= size

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class VncRelay:
    """One viewer's session with a VM's VNC server: TCP on the loopback <-> two Redis lists."""

    def __init__(self, agent: Agent, uuid: str, session: str,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.agent, self.uuid, self.session = agent, uuid, session
        self.reader, self.writer = reader, writer
        self.task: asyncio.Task | None = None
        host = agent.host.name
        self.out_key = vnc_streams.to_viewer(host, session)
        self.in_key = vnc_streams.to_server(host, session)
        self.alive_key = vnc_streams.alive_key(host, session)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"vnc-{self.session}")

    async def _run(self) -> None:
        redis = self.agent.redis
        jobs = [asyncio.create_task(self._from_server()),
                asyncio.create_task(self._to_server())]
        try:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            self.writer.close()
            with contextlib.suppress(Exception):
                await redis.rpush(self.out_key, vnc_streams.EOF)
                await redis.expire(self.out_key, vnc_streams.KEY_TTL)
                await redis.delete(self.in_key)
            self.agent.vnc_relays.pop(self.session, None)
            logger.info("VNC session %s of %s closed", self.session[:8], self.uuid)

    async def _viewer_alive(self) -> bool:
        return bool(await self.agent.redis.exists(self.alive_key))

    async def _from_server(self) -> None:
        redis = self.agent.redis
        while data := await self.reader.read(65536):
            # A viewer that reads slower than the VM draws: stop reading (TCP pushes back on
            # QEMU) instead of queueing frames in Redis without bound.
            while await redis.llen(self.out_key) > vnc_streams.MAX_QUEUED:
                if not await self._viewer_alive():
                    return
                await asyncio.sleep(0.05)
            async with redis.pipeline(transaction=False) as pipe:
                pipe.rpush(self.out_key, data)
                pipe.expire(self.out_key, vnc_streams.KEY_TTL)
                await pipe.execute()

    async def _to_server(self) -> None:
        while True:
            item = await self.agent.redis.blpop([self.in_key], timeout=vnc_streams.BLOCK_SECONDS)
            if item is None:
                if not await self._viewer_alive():
                    return
                continue
            if item[1] == vnc_streams.EOF:
                return
            self.writer.write(item[1])
            await self.writer.drain()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class Agent:
    def __init__(self, settings: HostSettings):
        self.settings = settings
        self.host = settings.host
        self.redis = aioredis.Redis.from_url(settings.redis_url, health_check_interval=30)
        self.celery = Celery("berth-agent", broker=settings.redis_url)
        self.celery.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self.relays: dict[str, ConsoleRelay] = {}
        self.vnc_relays: dict[str, VncRelay] = {}
        self.known: dict[str, str] = {}
        self.known_kind: dict[str, str] = {}  # which driver listed each known instance
        self.listing: dict[str, asyncio.Future] = {}  # a driver's listing still under way
        self.listed_kinds: set[str] = set()  # drivers that listed their instances at least once
        self.drivers: dict[str, Driver] = {}
        self.virtualization = None
        self.rescan = asyncio.Event()
        self.stopping = asyncio.Event()

    # --- reporting -------------------------------------------------------------------------
    async def report(self, task: str, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.reporter,
                lambda: self.celery.send_task(task, kwargs=kwargs, queue="panel"),
            )
        except Exception:
            logger.exception("could not report %s", task)

    # --- drivers ---------------------------------------------------------------------------
    def _load_drivers(self) -> None:
        for kind in KINDS:
            try:
                self.drivers[kind] = get_driver(kind, self.host)
            except Exception as exc:
                logger.warning("%s driver unavailable: %s", kind, exc)

    def facts(self) -> dict[str, Any]:
        meminfo = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                meminfo[key] = int(value.split()[0])
        self.host.state_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(self.host.state_dir)
        counts = collections.Counter(self.known.values())
        facts: dict[str, Any] = {
            "cpus": os.cpu_count() or 1,
            "memory_mib": meminfo.get("MemTotal", 0) // 1024,
            "memory_available_mib": meminfo.get("MemAvailable", 0) // 1024,
            "disk_gib": disk.total // 2**30,
            "disk_free_gib": disk.free // 2**30,
            "load": list(os.getloadavg()),
            "containers": "container" in self.drivers and os.geteuid() == 0,
            "vms": False,
            "instances": dict(counts),
            "kernel": os.uname().release,
            "uptime_seconds": int(time.monotonic()),
        }
        if self.virtualization is not None:
            facts.update(
                vms=True,
                virt_type=self.virtualization.domain_type,
                virt_reason=self.virtualization.reason,
            )
        else:
            # Say why this host offers no VMs, so the admin need not read the agent's log.
            facts["virt_reason"] = (
                "no VM driver (libvirt unavailable)" if "vm" not in self.drivers
                else "not yet probed, or the probe failed (see the agent's log)"
            )
        facts["kinds"] = [kind for kind in ("container", "vm") if facts["containers" if kind == "container" else "vms"]]
        return facts

    async def probe_virtualization(self) -> None:
        """Decide KVM or TCG once (it may boot a probe guest); until then the host offers no VMs."""
        vm = self.drivers.get("vm")
        if vm is None:
            return
        try:  # libvirt calls: in threads of their own (see in_daemon_thread)
            await in_daemon_thread(vm.prepare_host)
            self.virtualization = await in_daemon_thread(vm.virtualization)
        except Exception as exc:
            logger.warning("this host will not run VMs: %s", exc)
            return
        logger.info("VMs: %s (%s)", self.virtualization.domain_type, self.virtualization.reason)

    # --- loops -----------------------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                facts = await asyncio.to_thread(self.facts)
                await self.report("berth.panel.host_heartbeat", host_name=self.host.name, facts=facts)
            except Exception:
                logger.exception("heartbeat failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.heartbeat_seconds)

    def usage_samples(self) -> list[dict[str, Any]]:
        """Counters of every running instance (see panel/usage/tasks.py for the payload)."""
        samples = []
        now = time.time()
        for uuid, state in list(self.known.items()):
            relay = self.relays.get(uuid)
            if state != PowerState.RUNNING or relay is None:
                continue
            try:
                stats = relay.driver.stats(uuid)
            except DriverError as exc:
                logger.info("no usage for %s: %s", uuid, exc)
                continue
            samples.append({
                "uuid": uuid,
                "cpu_seconds": stats.cpu_seconds,
                "memory_bytes": stats.memory_bytes,
                "net_rx_bytes": stats.net_rx_bytes,
                "net_tx_bytes": stats.net_tx_bytes,
                "disk_used_bytes": stats.disk_used_bytes,
                "at": now,
            })
        return samples

    async def usage_loop(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), USAGE_SECONDS)
            try:
                samples = await in_daemon_thread(self.usage_samples)  # VMs' counters come from libvirt
                if samples:
                    await self.report("berth.panel.usage_samples", host_name=self.host.name, samples=samples)
            except Exception:
                logger.exception("usage sampling failed")

    async def scan_loop(self) -> None:
        first = True
        while not self.stopping.is_set():
            try:
                await self.scan(report_all=first)
                first = False
            except Exception:
                logger.exception("scan failed")
            self.rescan.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.rescan.wait(), SCAN_SECONDS)

    async def _list(self, driver: Driver):
        """The driver's instances; TimeoutError when its listing takes too long this time
        (it goes on in its thread; the next scans wait for that one instead of piling up)."""
        listing = self.listing.get(driver.kind)
        if listing is None or listing.done():
            listing = self.listing[driver.kind] = asyncio.ensure_future(in_daemon_thread(driver.list_instances))
            listing.add_done_callback(lambda f: f.cancelled() or f.exception())  # logged by the scan
        return await asyncio.wait_for(asyncio.shield(listing), LIST_TIMEOUT_SECONDS)

    async def _listed(self, driver: Driver) -> tuple[Driver, list, str | None]:
        try:
            return driver, await self._list(driver), None
        except DriverError as exc:
            return driver, [], str(exc)
        except TimeoutError:
            return driver, [], f"no answer within {LIST_TIMEOUT_SECONDS:.0f} s"

    async def scan(self, *, report_all: bool = False) -> None:
        """Attach consoles of running instances; report power states that changed.

        Each driver's consoles are attached as soon as that driver has listed its instances:
        containers' consoles never wait for libvirt, which can take its time (a busy or
        restarting libvirtd) right when the agent starts. A driver that could not list its
        instances this time says nothing about them: they are neither absent nor changed."""
        current: dict[str, tuple[str, Driver]] = {}
        unlisted: set[str] = set()
        listings = [asyncio.ensure_future(self._listed(driver)) for driver in self.drivers.values()]
        try:
            for done in asyncio.as_completed(listings):
                driver, statuses, error = await done
                if error is not None:
                    unlisted.add(driver.kind)
                    logger.warning("listing %s instances failed: %s", driver.kind, error)
                    continue
                for status in statuses:
                    current[status.uuid] = (status.state.value, driver)
                    if status.state == PowerState.RUNNING and status.uuid not in self.relays:
                        self.attach(status.uuid, driver)
        finally:
            for listing in listings:
                listing.cancel()
        for uuid, (state, driver) in current.items():
            first = report_all or driver.kind not in self.listed_kinds
            changed = uuid in self.known and self.known[uuid] != state
            if state == PowerState.STOPPED and (first or changed):
                await self._reap(uuid, driver)
            if first or changed:
                await self.report(
                    "berth.panel.power_state", host_name=self.host.name, uuid=uuid, power_state=state
                )
        for uuid in set(self.known) - set(current):
            if self.known_kind.get(uuid) in unlisted:  # not listed this time: as it was
                current[uuid] = (self.known[uuid], self.drivers[self.known_kind[uuid]])
                continue
            await self.report(
                "berth.panel.power_state", host_name=self.host.name, uuid=uuid, power_state="absent"
            )
            with contextlib.suppress(RedisError):  # destroyed: its console output goes with it
                await self.redis.delete(console_streams.output_stream(self.host.name, uuid))
        self.listed_kinds |= {driver.kind for driver in self.drivers.values()} - unlisted
        self.known = {uuid: state for uuid, (state, _) in current.items()}
        self.known_kind = {uuid: driver.kind for uuid, (_, driver) in current.items()}

    async def _reap(self, uuid: str, driver: Driver) -> None:
        """An instance stopped by itself (or while this agent was away): have its driver tidy
        what only a running instance needs (a container's firewall rules, veth, cgroups)."""
        reap = getattr(driver, "reap", None)  # drivers with nothing to tidy have none
        if reap is None:
            return
        try:
            await asyncio.to_thread(reap, uuid)
        except DriverError as exc:
            logger.warning("tidying stopped %s failed: %s", uuid, exc)

    def attach(self, uuid: str, driver: Driver) -> ConsoleRelay:
        relay = self.relays.get(uuid)
        if relay is None:
            relay = ConsoleRelay(self, uuid, driver)
            self.relays[uuid] = relay
            relay.start()
        return relay

    def relay_ended(self, relay: ConsoleRelay) -> None:
        if self.relays.get(relay.uuid) is relay:
            del self.relays[relay.uuid]
        if relay.attached:
            self.rescan.set()  # the console ended: find out at once whether the instance stopped
        # A console that could not be opened (a VM whose QEMU has not assigned its pty yet)
        # is retried by the next regular scan, not at once: that would spin.

    async def _driver_of(self, uuid: str) -> Driver | None:
        for driver in self.drivers.values():
            try:
                status = await asyncio.to_thread(driver.status, uuid)
            except DriverError:
                continue
            if status.state != PowerState.ABSENT:
                return driver
        return None

    async def command_loop(self) -> None:
        """Viewers' input and resizes, and commands from the host worker, over pub/sub."""
        input_channel = console_streams.input_channel(self.host.name)
        agent_channel = console_streams.agent_channel(self.host.name)
        while not self.stopping.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(input_channel, agent_channel)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    if message["channel"] == input_channel.encode():
                        await self._console_input(message["data"])
                    else:
                        await self._command(message["data"])
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                logger.warning("command channel lost (%s); reconnecting", exc)
                await asyncio.sleep(1)
            except Exception:
                logger.exception("command channel failed; reconnecting")
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _console_input(self, raw: bytes) -> None:
        try:
            message = console_streams.decode(raw)
        except ValueError:
            logger.warning("malformed console message dropped")
            return
        relay = self.relays.get(message.uuid)
        if relay is not None:
            relay.submit(message)

    async def _command(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            uuid = command["uuid"]
        except (ValueError, KeyError, TypeError):
            logger.warning("malformed agent command dropped")
            return
        if command.get("cmd") == "vnc":
            await self._open_vnc(uuid, str(command.get("session", "")))
        elif command.get("cmd") == "attach":
            driver = await self._driver_of(uuid)
            if driver is not None:
                self.attach(uuid, driver)
                self.known[uuid] = PowerState.RUNNING.value
                self.known_kind[uuid] = driver.kind
            if command.get("reply"):
                await self.redis.lpush(command["reply"], "ok")
                await self.redis.expire(command["reply"], 30)

    async def _open_vnc(self, uuid: str, session: str) -> None:
        """Connect a viewer's session to the VM's VNC port on the loopback, then say so."""
        if not vnc_streams.SESSION_RE.match(session):
            logger.warning("malformed VNC request dropped")
            return
        reply = vnc_streams.reply_key(self.host.name, session)
        answer = vnc_streams.ok_reply()
        vm = self.drivers.get("vm")
        try:
            port = await asyncio.to_thread(vm.vnc_port, uuid) if vm is not None else None
            if port is None:
                answer = vnc_streams.error_reply("The VM is not running, so it has no screen.")
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), vnc_streams.OPEN_TIMEOUT)
                relay = VncRelay(self, uuid, session, reader, writer)
                self.vnc_relays[session] = relay
                relay.start()
                logger.info("VNC session %s of %s opened (port %s)", session[:8], uuid, port)
        except (DriverError, OSError) as exc:  # OSError covers the connect timeout
            logger.info("VNC of %s not available: %s", uuid, exc)
            answer = vnc_streams.error_reply("The VM's screen is not reachable right now.")
        await self.redis.lpush(reply, answer)
        await self.redis.expire(reply, vnc_streams.KEY_TTL)

    async def run(self) -> None:
        self._load_drivers()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        workers = [
            asyncio.create_task(self.heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self.scan_loop(), name="scan"),
            asyncio.create_task(self.command_loop(), name="commands"),
            asyncio.create_task(self.probe_virtualization(), name="virt-probe"),
            asyncio.create_task(self.usage_loop(), name="usage"),
        ]
        watcher = asyncio.create_task(self._watch_vms(), name="vm-events") if "vm" in self.drivers else None
        logger.info("agent for host %s running", self.host.name)
        await self.stopping.wait()
        logger.info("stopping")
        # Consoles first: they stop where they are, and the next agent resumes there.
        for task in workers:
            task.cancel()
        for relay in list(self.relays.values()):
            await relay.stop()
        for vnc in list(self.vnc_relays.values()):
            await vnc.stop()
        logger.info("consoles detached")
        await asyncio.gather(*workers, return_exceptions=True)
        if watcher is not None:
            await self._stop_watching(watcher)
        await self.redis.aclose()
        self.reporter.shutdown(wait=True)
        logger.info("stopped")

    async def _watch_vms(self):
        """libvirt lifecycle events: a guest that powers off is reported within moments.
        Connecting runs in a thread of its own: a busy or restarting libvirtd must not hold
        up the agent's loop (the consoles, the heartbeat) meanwhile."""
        from workers.drivers.vm.events import LifecycleWatcher  # noqa: PLC0415 (libvirt only here)

        loop = asyncio.get_running_loop()

        def on_event(uuid: str, state: PowerState, reason: str) -> None:  # libvirt's thread
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._vm_event(uuid, state, reason)))

        watcher = LifecycleWatcher(self.host, on_event)
        try:
            await in_daemon_thread(watcher.start)
        except Exception as exc:
            logger.warning("cannot watch libvirt events: %s", exc)
            return None
        return watcher

    async def _stop_watching(self, task: asyncio.Task) -> None:
        """Stop the libvirt watcher (or its connecting), waiting a few seconds at most: a
        libvirtd that does not answer must not keep the agent from exiting."""
        if not task.done():
            task.cancel()  # still connecting: its thread gives up with the process
            return
        watcher = None if task.cancelled() or task.exception() else task.result()
        if watcher is None:
            return
        try:
            await asyncio.wait_for(in_daemon_thread(watcher.stop), STOP_WAIT_SECONDS)
        except TimeoutError:
            logger.warning("libvirt did not let go of the event watcher within %.0f s", STOP_WAIT_SECONDS)

    async def _vm_event(self, uuid: str, state: PowerState, reason: str) -> None:
        previous = self.known.get(uuid)
        self.known[uuid] = state.value
        self.known_kind[uuid] = "vm"
        if previous is not None and previous != state.value:
            await self.report(
                "berth.panel.power_state", host_name=self.host.name, uuid=uuid,
                power_state=state.value, reason=f"libvirt: {reason}",
            )
        self.rescan.set()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(Agent(load_host_settings()).run())


if __name__ == "__main__":
    main()
