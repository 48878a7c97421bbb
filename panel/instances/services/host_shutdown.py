"""Shutting a local host down cleanly (the end of `make run`) and bringing its instances back.

A host shutdown stops every running instance through its driver, records a system stop
operation for each, and removes the host-wide pieces (bridge) once nothing runs. On the next
start, the instances that the shutdown stopped are started again, as after a host reboot.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import transaction
from django.utils import timezone

from panel.audit import services as audit
from panel.instances.dispatch import build_spec
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services.actions import request_action
from panel.instances.states import transition
from workers.config import load_host_settings
from workers.drivers.base import InstanceSpec
from workers.drivers.registry import KINDS, get_driver

SHUTDOWN_REASON = "host-shutdown"
RUNNING_STATES = (InstanceState.RUNNING, InstanceState.REBOOTING)


def shutdown_local_host(env: dict[str, str]) -> Iterator[str]:
    settings = load_host_settings(env)
    host_cfg = settings.host
    instances = Instance.objects.select_related("host", "plan", "image", "host__ip_pool").filter(
        host__name=host_cfg.name, state__in=RUNNING_STATES
    )
    for instance in instances:
        driver = get_driver(instance.kind, host_cfg)
        try:
            driver.stop(InstanceSpec.from_dict(build_spec(instance)), timeout=5.0)
        except Exception as exc:
            yield f"{instance.hostname}: stop failed: {exc}"
            continue
        now = timezone.now()
        with transaction.atomic():
            Operation.objects.create(
                instance=instance,
                action=Operation.Action.STOP,
                state=Operation.State.SUCCEEDED,
                source=Operation.Source.SYSTEM,
                params={"reason": SHUTDOWN_REASON},
                started_at=now,
                finished_at=now,
            )
            transition(instance.pk, InstanceState.STOPPED)
            audit.record(
                action="instance.stop",
                source=Operation.Source.SYSTEM,
                target=instance,
                message=f"Stopped because host {host_cfg.name} shut down; it starts again with the host.",
            )
        yield f"{instance.hostname}: stopped"
    for kind in KINDS:
        teardown = getattr(get_driver(kind, host_cfg), "teardown_host", None)
        if callable(teardown):
            try:
                teardown()
            except Exception as exc:
                yield f"{kind} host teardown: {exc}"


def resume_after_restart(host_name: str) -> list[Instance]:
    """Queue a start for every instance the last host shutdown stopped."""
    resumed = []
    for instance in Instance.objects.filter(host__name=host_name, state=InstanceState.STOPPED):
        last = instance.operations.order_by("-created_at", "-id").first()
        if last is None or last.params.get("reason") != SHUTDOWN_REASON:
            continue
        request_action(
            instance=instance,
            action=Operation.Action.START,
            source=Operation.Source.SYSTEM,
            params={"reason": "host-restart"},
            reason=f"Started again with host {host_name}.",
        )
        resumed.append(instance)
    return resumed
