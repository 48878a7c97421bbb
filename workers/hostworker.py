"""The host worker: a Celery app without Django, consuming the host's own queue `host.<name>`.

It receives an operation id and the instance spec, runs the driver, and reports to the panel
by sending tasks to the `panel` queue. It never sees the panel's database.

    celery -A workers.hostworker worker -Q host.<name> -n host.<name>@%h
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery, signals
from celery.exceptions import SecurityWarning

from workers import backups, leases
from workers.config import broker_transport_options, host_key_prefix, load_host_settings
from workers.console_streams import agent_channel
from workers.drivers.base import DriverError, InstanceSpec, InstanceStatus, PowerState
from workers.drivers.registry import KINDS, get_driver

logger = logging.getLogger("berth.host")

if os.environ.get("BERTH_QUIET_ROOT_WARNING"):
    # A host worker must run as root (namespaces, cgroups, libvirt): the warning cannot apply.
    warnings.filterwarnings("ignore", category=SecurityWarning)

settings = load_host_settings()
HOST = settings.host

app = Celery("berth-host", broker=settings.redis_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=f"host.{HOST.name}",
    broker_connection_retry_on_startup=True,
    broker_transport_options=broker_transport_options(HOST.name),
    # Remote control needs shared pidbox keys and channels a host's Redis user may not use.
    worker_enable_remote_control=False,
)

PANEL_QUEUE = "panel"
STOP_TIMEOUT = 10.0
# Deliveries of one operation that may run the driver: more means it keeps killing its worker.
MAX_ATTEMPTS = 3
# Actions whose result carries a note for the customer ("forced off after 10 s", "takes
# effect at the next stop and start"); for the others the detail is only the power state.
NOTED_ACTIONS = ("stop", "suspend", "reboot", "change_plan")


def report(task: str, **kwargs: Any) -> None:
    app.send_task(task, kwargs=kwargs, queue=PANEL_QUEUE)


def ask_agent_to_attach(uuid: str, *, wait: float = 0.0) -> bool:
    """Tell the host agent to attach this instance's console now; optionally wait for it."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        reply = f"{host_key_prefix(HOST.name)}agent-reply:{secrets.token_hex(8)}" if wait else ""
        client.publish(agent_channel(HOST.name), json.dumps({"cmd": "attach", "uuid": uuid, "reply": reply}))
        if wait:
            return client.blpop([reply], timeout=wait) is not None
        return True
    except redis.RedisError:
        logger.warning("could not reach the agent to attach %s", uuid)
        return False
    finally:
        client.close()


_prepared: set[str] = set()


def driver_for(kind: str):
    """The kind's driver, its host-wide pieces (bridge, cgroups, daemons) made once per process."""
    driver = get_driver(kind, HOST)
    if kind not in _prepared:
        driver.prepare_host()
        _prepared.add(kind)
    return driver


def perform(action: str, spec: InstanceSpec, params: dict[str, Any],
            progress: backups.Progress | None = None) -> InstanceStatus | backups.StepOutcome:
    """Run ``action`` with the instance's driver. Snapshots, backups, restores and the steps
    of a move (``backups.ACTIONS``) return a StepOutcome: the power state and a result."""
    driver = driver_for(spec.kind)
    # VMs start paused until the agent has attached the console, so it has every line of boot.
    boot: dict[str, Any] = {}
    if spec.kind == "vm":
        boot["before_resume"] = lambda: ask_agent_to_attach(spec.uuid, wait=5.0)
    if action in backups.ACTIONS:
        return backups.Steps(driver, progress=progress or (lambda _text: None), boot=boot).run(action, spec, params)
    if action == "create":
        return driver.create(spec, **boot)
    if action == "start":
        return driver.start(spec, **boot)
    if action in ("stop", "suspend"):
        return driver.stop(spec, timeout=STOP_TIMEOUT)
    if action == "reboot":
        return driver.reboot(spec, timeout=STOP_TIMEOUT)
    if action == "rebuild":
        return driver.rebuild(spec, **boot)
    if action == "change_plan":
        return driver.change_plan(spec)
    if action == "unsuspend":
        return driver.start(spec, **boot) if params.get("start") else driver.status(spec.uuid)
    if action == "terminate":
        driver.destroy(spec)
        return InstanceStatus(uuid=spec.uuid, state=PowerState.ABSENT)
    if action in ("upgrade", "rollback"):  # the spec carries the image to run now
        if spec.kind != "container":
            raise DriverError("Only application containers can be upgraded.")
        return driver.upgrade(spec, start=bool(params.get("start", True)), timeout=STOP_TIMEOUT)
    raise DriverError(f"Unknown action {action!r}.")


def _observed_state(spec: InstanceSpec) -> str | None:
    try:
        return get_driver(spec.kind, HOST).status(spec.uuid).state.value
    except Exception:
        return None


def _outcome(operation_id: int, action: str, instance: InstanceSpec,
             params: dict[str, Any], progress: backups.Progress | None = None) -> dict[str, Any]:
    """Run the driver; the operation_finished report (a step's: step_report), success or not."""
    step = params.get("step", "")
    # A step of a multi-step operation (a move runs on two hosts) says which step and host.
    head: dict[str, Any] = {"operation_id": operation_id}
    if step:
        head.update(step=step, host_name=HOST.name, event="finished")
    try:
        done = perform(action, instance, params, progress)
    except DriverError as exc:
        logger.warning("%s of %s failed: %s", action, instance.uuid, exc)
        return {**head, "ok": False, "error": str(exc), "power_state": _observed_state(instance)}
    except Exception as exc:
        logger.exception("%s of %s crashed", action, instance.uuid)
        return {**head, "ok": False,
                "error": f"Internal error on host {HOST.name}: {exc.__class__.__name__}: {exc}",
                "power_state": _observed_state(instance)}
    status, result = (done.status, done.result) if isinstance(done, backups.StepOutcome) else (done, None)
    if status.state == PowerState.RUNNING:
        ask_agent_to_attach(instance.uuid)
    outcome = {**head, "ok": True, "power_state": status.state.value,
               "detail": status.detail if action in NOTED_ACTIONS else ""}
    if step or isinstance(done, backups.StepOutcome):  # a snapshot's or backup's too (sizes, checksum)
        outcome["result"] = result or {}
    return outcome


STEP_REPORT = "berth.panel.step_report"


def send_outcome(outcome: dict[str, Any]) -> None:
    """A step's outcome goes to step_report, any other operation's to operation_finished."""
    report(STEP_REPORT if outcome.get("step") else "berth.panel.operation_finished", **outcome)


class _StepProgress:
    """Progress of a step, reported at most as often as backups.PROGRESS_EVERY allows."""

    def __init__(self, operation_id: int, step: str) -> None:
        self.operation_id, self.step = operation_id, step

    def __call__(self, text: str) -> None:
        if self.step:
            report(STEP_REPORT, operation_id=self.operation_id, step=self.step, host_name=HOST.name,
                   event="progress", progress=text[:200])
        else:
            report("berth.panel.operation_progress", operation_id=self.operation_id, progress=text[:200])


_lease_client: redis.Redis | None = None


def lease_client() -> redis.Redis:
    global _lease_client
    if _lease_client is None:
        _lease_client = redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                             health_check_interval=30)
    return _lease_client


@contextlib.contextmanager
def _renewing(lease: leases.OperationLease) -> Iterator[None]:
    """Renew the lease while the driver works: its silence is how a dead worker is told."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(leases.RENEW_SECONDS):
            try:
                lease.renew()
            except redis.RedisError as exc:  # Redis restarting: the next renewal catches up
                logger.warning("could not renew the lease of %s: %s", lease.keys[0], exc)

    thread = threading.Thread(target=renew, name="lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@app.task(name="berth.host.run_operation", bind=True, max_retries=None)
def run_operation(self, operation_id: int, action: str, spec: dict[str, Any],
                  params: dict[str, Any]) -> None:
    """Run one operation once: a redelivery (the worker died, the message came back) runs it
    again only when no live worker holds it, and never after it finished (workers/leases.py)."""
    params = params or {}
    step = params.get("step", "")
    lease = leases.OperationLease(lease_client(), HOST.name, backups.lease_id(operation_id, step))
    claim = lease.claim()
    if claim.state == leases.BUSY:
        # Another worker has it now. Look again once its lease could have lapsed, so the
        # operation is taken over if that worker dies; once it finishes, this copy is dropped.
        raise self.retry(countdown=leases.LEASE_SECONDS)
    if claim.state in (leases.DONE, leases.ABANDONED):
        if claim.report:  # finished, but its report may be what got lost
            send_outcome(claim.report)
        return
    instance = InstanceSpec.from_dict(spec)
    progress = _StepProgress(operation_id, step)
    if step:
        report(STEP_REPORT, operation_id=operation_id, step=step, host_name=HOST.name, event="started")
    else:
        report("berth.panel.operation_started", operation_id=operation_id)
    if claim.attempt > MAX_ATTEMPTS:
        outcome = {"operation_id": operation_id, "ok": False, "power_state": _observed_state(instance),
                   "error": f"The host worker stopped {MAX_ATTEMPTS} times while running this "
                            "operation; it was not tried again."}
        if step:
            outcome.update(step=step, host_name=HOST.name, event="finished")
    else:
        if claim.attempt > 1:
            logger.warning("%s of %s: attempt %s (the worker running it stopped)", action,
                           instance.uuid, claim.attempt)
            progress(f"Attempt {claim.attempt}: the host worker restarted during the last one.")
        with _renewing(lease):
            outcome = _outcome(operation_id, action, instance, params, progress)
    # Stored before it is sent: if this process dies in between, the next delivery (or the
    # panel's reaper) finds the report in the lease.
    if lease.finish(outcome):
        send_outcome(outcome)
    else:
        logger.warning("operation %s was given up by the panel before it finished", operation_id)


@app.task(name="berth.host.remove_archive")
def remove_archive(path: str) -> None:
    """Remove a backup archive (and its .sha256) the panel no longer keeps (retention, or its
    owner deleted it). Only a Berth archive path is touched: ``<target>/<uuid>/<name>.tar.zst``."""
    archive = backups.removable_archive(path)
    if archive is None:
        logger.warning("refused to remove %r: not a backup archive's path", path)
        return
    backups.remove_archive(str(archive))


@signals.worker_init.connect
def restore_unacked(sender=None, **kwargs) -> None:
    """At start, put back what this host's previous worker had taken but not finished.

    The host's in-flight messages live under its own keys (``broker_transport_options``), so
    whatever is there when its worker starts was left by one that died (SIGKILL, OOM, power
    loss). Without this, Redis would give them back only after the visibility timeout (an hour).
    Should another worker of the same host still be alive, the leases keep its operations
    from running twice.
    """
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            client = channel.client
            tags = client.hkeys(channel.unacked_key)
            for tag in tags:
                channel.qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag,
                                           client=client)
    except Exception as exc:  # never keep the worker from starting; the timeout still applies
        logger.warning("could not restore unfinished messages: %s", exc)
        return
    if tags:
        logger.warning("restored %d message(s) left unfinished by a previous worker", len(tags))


@app.task(name="berth.host.reconcile")
def reconcile(requested_at: str | None = None) -> None:
    """Tell the panel what really exists on this host, for it to compare with its records.
    ``requested_at`` (the panel's clock) goes back with the report: the listing is younger."""
    seen: list[dict[str, Any]] = []
    for kind in KINDS:
        driver = get_driver(kind, HOST)
        try:
            statuses = driver.list_instances()
        except DriverError as exc:
            logger.warning("cannot list %s instances: %s", kind, exc)
            continue
        for status in statuses:
            item: dict[str, Any] = {"uuid": status.uuid, "state": status.state.value, "kind": kind}
            if kind == "vm":  # a VM's vCPUs and memory as defined: edits with virsh show up
                with contextlib.suppress(DriverError):
                    item.update(driver.configured(status.uuid))
            if kind == "container" and status.state == PowerState.RUNNING:
                item["problems"] = _container_problems(status.uuid)
            seen.append(item)
    report("berth.panel.reconcile_report", host_name=HOST.name, instances=seen,
           requested_at=requested_at)


def _container_problems(uuid: str) -> list[str]:
    """What a running container lacks on the host because someone removed it behind Berth's
    back. Reported, never repaired here: its next start makes the pieces again."""
    from workers.drivers.container import network  # noqa: PLC0415 (containers only)
    from workers.drivers.container.state import veth_name  # noqa: PLC0415

    link = veth_name(uuid)
    if not network.link_exists(link):
        return [f"its network link {link} is gone from the host: the instance is cut off "
                "from the network until it is stopped and started again"]
    return []
