"""The host agent: the long-lived process on each host.

- heartbeat: capacity and facts to the panel every few seconds;
- console relay: every running instance's console into a Redis stream (scrollback + live for
  any number of viewers), and viewers' input and resizes back to the console;
- watch: power-state changes nobody asked for (a container that exited, a VM powered off from
  inside) reported to the panel at once.

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
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from workers import console_streams
from workers.config import HostSettings, load_host_settings
from workers.drivers.base import Driver, DriverError, PowerState
from workers.drivers.registry import KINDS, get_driver

logger = logging.getLogger("berth.agent")

SCROLLBACK_BYTES = int(os.environ.get("BERTH_CONSOLE_SCROLLBACK_BYTES", str(128 * 1024)))
SCAN_SECONDS = 2.0
USAGE_SECONDS = float(os.environ.get("BERTH_USAGE_SECONDS", "30"))


class ConsoleRelay:
    """Copies one instance's console output into its Redis stream, resuming after restarts."""

    def __init__(self, agent: Agent, uuid: str, driver: Driver):
        self.agent, self.uuid, self.driver = agent, uuid, driver
        self.key = console_streams.output_stream(uuid)
        self.session = None
        self.sizes: collections.deque[tuple[bytes, int]] = collections.deque()
        self.total = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"console-{self.uuid}")

    async def _boot_id(self) -> str:
        """Output offsets restart at 0 with each container boot (the shim counts them), but a
        VM's run on for the instance's whole life (they index its serial log)."""
        if self.driver.kind == "vm":
            return "log"
        status = await asyncio.to_thread(self.driver.status, self.uuid)
        return f"{status.pid or 0}"

    async def _resume_offset(self, boot: str) -> int:
        """Rebuild the size index from the stream; return where this boot's output stopped."""
        redis = self.agent.redis
        self.sizes.clear()
        self.total = 0
        offset = 0
        for entry_id, fields in await redis.xrange(self.key):
            size = len(fields.get(b"d", b""))
            self.sizes.append((entry_id, size))
            self.total += size
            if fields.get(b"b", b"").decode() == boot:
                offset = int(fields[b"o"]) + size
        return offset

    async def _append(self, boot: str, offset: int, data: bytes) -> None:
        redis = self.agent.redis
        entry_id = await redis.xadd(self.key, {"d": data, "o": offset, "b": boot})
        self.sizes.append((entry_id, len(data)))
        self.total += len(data)
        if self.total > SCROLLBACK_BYTES:
            while self.total > SCROLLBACK_BYTES and len(self.sizes) > 1:
                _, size = self.sizes.popleft()
                self.total -= size
            await redis.xtrim(self.key, minid=self.sizes[0][0])

    async def _run(self) -> None:
        try:
            boot = await self._boot_id()
            from_offset = await self._resume_offset(boot)
            self.session = await self.driver.open_console(self.uuid, from_offset=from_offset)
            while (chunk := await self.session.read()) is not None:
                offset, data = chunk
                if data:
                    await self._append(boot, offset, data)
        except asyncio.CancelledError:
            raise
        except DriverError as exc:
            logger.info("console of %s not available: %s", self.uuid, exc)
        except Exception:
            logger.exception("console relay of %s failed", self.uuid)
        finally:
            if self.session is not None:
                with contextlib.suppress(Exception):
                    await self.session.close()
            self.agent.relay_ended(self)

    async def write(self, data: bytes) -> None:
        if self.session is not None:
            await self.session.write(data)

    async def resize(self, rows: int, cols: int) -> None:
        if self.session is not None:
            await self.session.resize(rows, cols)

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
        self.known: dict[str, str] = {}
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
        }
        if self.virtualization is not None:
            facts.update(
                vms=True,
                virt_type=self.virtualization.domain_type,
                virt_reason=self.virtualization.reason,
            )
        return facts

    async def probe_virtualization(self) -> None:
        """Decide KVM or TCG once (it may boot a probe guest); until then the host offers no VMs."""
        vm = self.drivers.get("vm")
        if vm is None:
            return
        try:
            await asyncio.to_thread(vm.prepare_host)
            self.virtualization = await asyncio.to_thread(vm.virtualization)
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
                samples = await asyncio.to_thread(self.usage_samples)
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

    async def scan(self, *, report_all: bool = False) -> None:
        """Attach consoles of running instances; report power states that changed."""
        current: dict[str, tuple[str, Driver]] = {}
        for driver in self.drivers.values():
            try:
                statuses = await asyncio.to_thread(driver.list_instances)
            except DriverError as exc:
                logger.warning("listing %s instances failed: %s", driver.kind, exc)
                continue
            for status in statuses:
                current[status.uuid] = (status.state.value, driver)
        for uuid, (state, driver) in current.items():
            if state == PowerState.RUNNING and uuid not in self.relays:
                self.attach(uuid, driver)
            changed = uuid in self.known and self.known[uuid] != state
            if report_all or changed:
                await self.report(
                    "berth.panel.power_state", host_name=self.host.name, uuid=uuid, power_state=state
                )
        for uuid in set(self.known) - set(current):
            await self.report(
                "berth.panel.power_state", host_name=self.host.name, uuid=uuid, power_state="absent"
            )
        self.known = {uuid: state for uuid, (state, _) in current.items()}

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
        self.rescan.set()  # the console ended: find out at once whether the instance stopped

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
            except Exception:
                logger.exception("command channel lost; reconnecting")
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
        if relay is None:
            return
        try:
            if message.kind == "i":
                await relay.write(message.data)
            else:
                await relay.resize(message.rows, message.cols)
        except Exception as exc:
            logger.info("console input to %s failed: %s", message.uuid, exc)

    async def _command(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            uuid = command["uuid"]
        except (ValueError, KeyError, TypeError):
            logger.warning("malformed agent command dropped")
            return
        if command.get("cmd") == "attach":
            driver = await self._driver_of(uuid)
            if driver is not None:
                self.attach(uuid, driver)
                self.known[uuid] = PowerState.RUNNING.value
            if command.get("reply"):
                await self.redis.lpush(command["reply"], "ok")
                await self.redis.expire(command["reply"], 30)

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
        watcher = self._watch_vms() if "vm" in self.drivers else None
        logger.info("agent for host %s running", self.host.name)
        await self.stopping.wait()
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
        for task in workers:
            task.cancel()
        for relay in list(self.relays.values()):
            await relay.stop()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.redis.aclose()
        self.reporter.shutdown(wait=True)

    def _watch_vms(self):
        """libvirt lifecycle events: a guest that powers off is reported within moments."""
        from workers.drivers.vm.events import LifecycleWatcher  # noqa: PLC0415 (libvirt only here)

        loop = asyncio.get_running_loop()

        def on_event(uuid: str, state: PowerState, reason: str) -> None:  # libvirt's thread
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._vm_event(uuid, state, reason)))

        watcher = LifecycleWatcher(self.host, on_event)
        try:
            watcher.start()
        except Exception as exc:
            logger.warning("cannot watch libvirt events: %s", exc)
            return None
        return watcher

    async def _vm_event(self, uuid: str, state: PowerState, reason: str) -> None:
        previous = self.known.get(uuid)
        self.known[uuid] = state.value
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
