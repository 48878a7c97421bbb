"""The host worker: a Celery app without Django, consuming the host's own queue `host.<name>`.

It receives an operation id and the instance spec, runs the driver, and reports to the panel
by sending tasks to the `panel` queue. It never sees the panel's database.

    celery -A workers.hostworker worker -Q host.<name> -n host.<name>@%h
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SecurityWarning

from workers.config import load_host_settings
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
    broker_transport_options={"visibility_timeout": 3600},
)

PANEL_QUEUE = "panel"
STOP_TIMEOUT = 10.0


def report(task: str, **kwargs: Any) -> None:
    app.send_task(task, kwargs=kwargs, queue=PANEL_QUEUE)


def ask_agent_to_attach(uuid: str, *, wait: float = 0.0) -> bool:
    """Tell the host agent to attach this instance's console now; optionally wait for it."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        reply = f"berth:agent-reply:{secrets.token_hex(8)}" if wait else ""
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


def perform(action: str, spec: InstanceSpec, params: dict[str, Any]) -> InstanceStatus:
    driver = driver_for(spec.kind)
    # VMs start paused until the agent has attached the console, so it has every line of boot.
    boot: dict[str, Any] = {}
    if spec.kind == "vm":
        boot["before_resume"] = lambda: ask_agent_to_attach(spec.uuid, wait=5.0)
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
    raise DriverError(f"Unknown action {action!r}.")


def _observed_state(spec: InstanceSpec) -> str | None:
    try:
        return get_driver(spec.kind, HOST).status(spec.uuid).state.value
    except Exception:
        return None


@app.task(name="berth.host.run_operation")
def run_operation(operation_id: int, action: str, spec: dict[str, Any], params: dict[str, Any]) -> None:
    report("berth.panel.operation_started", operation_id=operation_id)
    instance = InstanceSpec.from_dict(spec)
    try:
        status = perform(action, instance, params or {})
    except DriverError as exc:
        logger.warning("%s of %s failed: %s", action, instance.uuid, exc)
        report(
            "berth.panel.operation_finished",
            operation_id=operation_id,
            ok=False,
            error=str(exc),
            power_state=_observed_state(instance),
        )
        return
    except Exception as exc:
        logger.exception("%s of %s crashed", action, instance.uuid)
        report(
            "berth.panel.operation_finished",
            operation_id=operation_id,
            ok=False,
            error=f"Internal error on host {HOST.name}: {exc.__class__.__name__}: {exc}",
            power_state=_observed_state(instance),
        )
        return
    if status.state == PowerState.RUNNING:
        ask_agent_to_attach(instance.uuid)
    report(
        "berth.panel.operation_finished",
        operation_id=operation_id,
        ok=True,
        power_state=status.state.value,
    )


@app.task(name="berth.host.reconcile")
def reconcile() -> None:
    """Tell the panel what really exists on this host, for it to compare with its records."""
    seen: list[dict[str, str]] = []
    for kind in KINDS:
        try:
            statuses = get_driver(kind, HOST).list_instances()
        except DriverError as exc:
            logger.warning("cannot list %s instances: %s", kind, exc)
            continue
        seen.extend({"uuid": s.uuid, "state": s.state.value, "kind": kind} for s in statuses)
    report("berth.panel.reconcile_report", host_name=HOST.name, instances=seen)
