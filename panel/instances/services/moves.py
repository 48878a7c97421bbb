"""Moving an instance to another host (cold migration), and emptying a draining host.

A move is ONE Operation (action ``move``) made of host steps (``workers/backups.py``, host
action ``migrate``), each sent to the host that runs it after the previous one reported:

    export  (source)  stop it if it runs, write it to the shared backup target, with its SHA-256
    import  (target)  check the archive against that SHA-256, install it, start it (proof that
                      it runs there), stop it again unless it ran before the move
    cleanup (source)  remove the old copy and the archive — only once the target runs it

and on a failure at export or import:

    abort   (target)  remove whatever the import left (only after an import was sent)
    recover (source)  remove the archive, start the instance again if it ran before

so the instance stays whole on its source host and the operation fails with the reason.

**Reservation**: the target's room (vCPUs, memory, disk, a uid range, an address) is taken when
the move is accepted, under the target host's row lock, like an order: the address as an
``IpAddress`` row in the target's pool, the rest as the operation's ``reserve_host`` (counted by
``panel/hosts/placement.py`` through ``reservations``) until the instance is switched over.
During the move the instance holds its address on both hosts.

**Identity**: uuid, hostname, MAC and disk are kept. The address is kept when the target's pool
contains it and it is free there, otherwise one is taken from the target's pool; the same for
a container's uid range (the import shifts the files' owners into the target's range).

**Running instances** are moved too: stopped for the copy, started on the target (downtime
is the copy), started again on the source when the move fails. Suspended instances move and
stay off. The steps are fenced by their own leases (``<op>:<step>``) and judged by the reaper
like any operation (``reap_move``): a worker that dies mid-step fails that step, which leads
to abort and recover like any failure.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid as uuid_lib
from collections.abc import Collection
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.audit import services as audit
from panel.hosts.models import Host, IpAddress
from panel.hosts.placement import capacity_problem, free_address, host_usage, place, taken_by_moves
from panel.instances.dispatch import RUN_OPERATION_TASK, build_spec
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.services import results
from panel.instances.services.errors import CapacityError
from panel.instances.states import ACTION_FROM_STATES, ALLOWED_TRANSITIONS, transition
from panel.realtime.publish import publish_operation
from workers import leases
from workers.backups import archive_path, lease_id

logger = logging.getLogger(__name__)

A = Operation.Action
S = InstanceState
HOST_ACTION = "migrate"  # the host worker's name for the steps of a move
ACTIVE = (Operation.State.QUEUED, Operation.State.RUNNING)
POWER_TO_STATE = {"running": S.RUNNING, "stopped": S.STOPPED}

LABELS = {
    "export": "Exporting from {source}",
    "import": "Importing on {target}",
    "cleanup": "Removing the old copy from {source}",
    "abort": "Cleaning {target} after the failure",
    "recover": "Restoring the instance on {source}",
}
STEP_HOST = {"export": "source", "import": "target", "cleanup": "source", "abort": "target", "recover": "source"}


class MoveError(Exception):
    """The move cannot be accepted; ``field`` names the form field it is about, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --- reservations (read by panel/hosts/placement.py) ------------------------------------------

def reservations(host_ids: Collection[int]) -> list[tuple[int, Any, int | None]]:
    """(target host id, plan, uid slot) of every move under way that holds room on one of
    ``host_ids`` and has not switched the instance over yet."""
    ids = [int(pk) for pk in host_ids]
    if not ids:
        return []
    moves = (Operation.objects.filter(action=A.MOVE, state__in=ACTIVE, params__reserve_host__in=ids)
             .select_related("instance__plan"))
    return [(op.params["reserve_host"], op.instance.plan, op.params.get("reserve_uid_slot")) for op in moves]


# --- accepting a move -------------------------------------------------------------------------

def _require_staff(actor) -> None:
    if actor is None or not (getattr(actor, "is_active", False) and getattr(actor, "is_staff", False)):
        raise MoveError("Only staff may move instances between hosts.")


def request_move(*, instance: Instance, actor, target_host: Host | int | None = None,
                 source: str = Operation.Source.UI, evacuation: str = "") -> Operation:
    """Accept a move of ``instance`` to ``target_host`` (None: placement chooses) and send its
    first step. Raises MoveError (nothing written) when it cannot be done now."""
    _require_staff(actor)
    try:
        with transaction.atomic():
            return _request_move(instance=instance, actor=actor, target_host=target_host,
                                 source=source, evacuation=evacuation)
    except CapacityError as exc:
        reasons = "; ".join(f"{name}: {why}" for name, why in exc.reasons.items())
        raise MoveError(f"{exc} ({reasons})" if reasons else str(exc), "host") from None


def _request_move(*, instance, actor, target_host, source, evacuation) -> Operation:
    from panel.instances.services.actions import active_operation  # noqa: PLC0415 (cycle)

    instance = (Instance.objects.select_for_update(of=("self",))
                .select_related("host__ip_pool", "plan", "image").get(pk=instance.pk))
    origin = instance.host
    if origin is None:
        raise MoveError(f"{instance.hostname} is on no host: there is nothing to move.")
    if instance.state not in ACTION_FROM_STATES[A.MOVE]:
        raise MoveError(f"{instance.hostname} is {instance.state}: only running, stopped or suspended "
                        "instances can be moved.")
    busy = active_operation(instance)
    if busy is not None:
        raise MoveError(f"{instance.hostname} is busy: {busy.get_action_display().lower()} is "
                        f"{busy.state}. Try again when it has finished.")
    if not origin.is_online:
        raise MoveError(f"Host {origin.name} is {origin.status}: it cannot export {instance.hostname} now.")
    target, address, uid_slot = _reserve(instance, origin, target_host)
    IpAddress.objects.create(pool=target.ip_pool, address=address, instance=instance)
    kept = address == _address_on(instance, origin)
    operation = Operation.objects.create(
        instance=instance, action=A.MOVE, source=source,
        requested_by=actor if actor is not None and actor.is_authenticated else None,
        params={},
    )
    archive = f"move-{operation.pk}"
    backup_target = str(settings.BERTH_BACKUP_TARGET)
    params: dict[str, Any] = {
        "source_host": origin.pk, "source_name": origin.name,
        "target_host": target.pk, "target_name": target.name,
        "reserve_host": target.pk, "reserve_uid_slot": uid_slot,
        "source_address": _address_on(instance, origin), "target_address": address,
        "source_uid_slot": instance.uid_slot, "target_uid_slot": uid_slot,
        "was_running": instance.state == S.RUNNING, "was_suspended": instance.state == S.SUSPENDED,
        "backup_target": backup_target, "archive": archive,
        "path": str(archive_path(backup_target, instance.uuid.hex, archive)),
        "steps": [], "failure": "",
    }
    if evacuation:
        params["evacuation"] = evacuation
    operation.params = params
    _send_step(operation, instance, "export")
    operation.progress = _label(operation, "export") + " (queued)"
    operation.save(update_fields=["params", "progress"])
    audit.record(
        action="instance.move", source=source, actor=actor, target=instance,
        message=(f"Move of {instance.hostname} from {origin.name} to {target.name} requested"
                 f" ({'address kept' if kept else f'new address {address}'}"
                 f"{', stopped for the copy and started again there' if params['was_running'] else ''})."),
        data={"operation": operation.pk, "from": origin.name, "to": target.name, "address": address,
              "uid_slot": uid_slot, **({"evacuation": evacuation} if evacuation else {})},
    )
    publish_operation(operation)
    return operation


def _address_on(instance: Instance, host: Host) -> str:
    return (IpAddress.objects.filter(instance=instance, pool__host=host)
            .values_list("address", flat=True).first() or "")


def _reserve(instance: Instance, origin: Host, target_host) -> tuple[Host, str, int | None]:
    """The target host (row locked), the address and uid slot the instance gets there."""
    plan = instance.plan
    allowed = set(plan.hosts.values_list("pk", flat=True))
    if target_host is not None:
        pk = target_host.pk if isinstance(target_host, Host) else target_host
        target = Host.objects.select_for_update(of=("self",)).select_related("ip_pool").filter(pk=pk).first()
        if target is None:
            raise MoveError("Choose a host that exists.", "host")
        problem = _unfit(target, origin, instance, allowed)
        if problem:
            raise MoveError(f"{instance.hostname} cannot move to {target.name}: {problem}.", "host")
        address = _keep_or_free_address(target, _address_on(instance, origin))
        uid_slot = _keep_or_free_uid_slot(target, instance)
        if address is None:
            raise MoveError(f"{target.name} has no free IPv4 address in its pool.", "host")
        if instance.kind == "container" and uid_slot is None:
            raise MoveError(f"{target.name} has no free uid range.", "host")
        return target, address, uid_slot
    candidates = allowed or set(Host.objects.values_list("pk", flat=True))
    candidates.discard(origin.pk)
    if not candidates:
        raise MoveError(f"There is no other host {instance.hostname} may run on"
                        + (f" (plan {plan.name} allows only {origin.name})." if allowed else "."), "host")
    try:
        placement = place(kind=instance.kind, vcpus=plan.vcpus, memory_mib=plan.memory_mib,
                          disk_gib=plan.disk_gib, allowed_hosts=candidates, plan_name=plan.name)
    except CapacityError as exc:
        reasons = {**exc.reasons, origin.name: "the instance is on this host"}
        raise CapacityError(f"No other host has room for {instance.hostname} right now.", reasons) from None
    target = placement.host
    address = _keep_or_free_address(target, _address_on(instance, origin)) or placement.address
    uid_slot = _keep_or_free_uid_slot(target, instance) if instance.kind == "container" else None
    return target, address, uid_slot if uid_slot is not None else placement.uid_slot


def _unfit(target: Host, origin: Host, instance: Instance, allowed: set[int]) -> str:
    if target.pk == origin.pk:
        return "it is already there"
    if not target.is_enabled:
        return "the host is disabled"
    if target.is_draining:
        return "the host is draining"
    if not target.is_online:
        return f"the host is {target.status}"
    if not target.supports(instance.kind):
        return f"the host does not run {instance.kind}s"
    if allowed and target.pk not in allowed:
        return f"plan {instance.plan.name} is not allowed on it"
    if getattr(target, "ip_pool", None) is None:
        return "the host has no address pool"
    plan = instance.plan
    return capacity_problem(target, host_usage(target), vcpus=plan.vcpus, memory_mib=plan.memory_mib,
                            disk_gib=plan.disk_gib)


def _keep_or_free_address(target: Host, current: str) -> str | None:
    pool = target.ip_pool
    if current:
        address = ipaddress.IPv4Address(current)
        network = pool.ip_network
        if (address in network and address not in (network.network_address, network.broadcast_address)
                and current != pool.gateway
                and not IpAddress.objects.filter(pool=pool, address=current).exists()):
            return current
    return free_address(target)


def _keep_or_free_uid_slot(target: Host, instance: Instance) -> int | None:
    if instance.kind != "container":
        return None
    taken = set(Instance.objects.live().filter(host=target, uid_slot__isnull=False)
                .values_list("uid_slot", flat=True)) | taken_by_moves(target)
    if instance.uid_slot is not None and instance.uid_slot < target.uid_slots and instance.uid_slot not in taken:
        return instance.uid_slot
    return next((slot for slot in range(target.uid_slots) if slot not in taken), None)


# --- sending steps ----------------------------------------------------------------------------

def _hosts(operation: Operation) -> dict[str, Host]:
    params = operation.params
    found = {h.pk: h for h in Host.objects.select_related("ip_pool").filter(
        pk__in=[params["source_host"], params["target_host"]])}
    return {"source": found.get(params["source_host"]), "target": found.get(params["target_host"])}


def _label(operation: Operation, step: str) -> str:
    params = operation.params
    return LABELS[step].format(source=params["source_name"], target=params["target_name"])


def _spec_on(instance: Instance, host: Host, *, address: str, uid_slot: int | None) -> dict[str, Any]:
    """The instance as ``host`` must see it: its bridge, its pool's address and uid range."""
    spec = build_spec(instance)
    pool = host.ip_pool
    spec["network"].update(address=address, prefixlen=pool.prefixlen, gateway=pool.gateway, bridge=host.bridge)
    spec["uid_slot"] = uid_slot or 0
    return spec


def _step_params(params: dict[str, Any], step: str) -> dict[str, Any]:
    if step == "export":
        return {"target": params["backup_target"], "archive": params["archive"]}
    if step == "import":
        return {"path": params["path"], "sha256": params.get("sha256", ""),
                "keep_running": params["was_running"]}
    if step == "cleanup":
        return {"path": params["path"]}
    if step == "recover":
        return {"path": params["path"], "start": params["was_running"]}
    return {}


def _send_step(operation: Operation, instance: Instance, step: str) -> None:
    """Record ``step`` as the current one and send it to its host after commit."""
    from panel.celery import app as celery_app  # noqa: PLC0415

    params = operation.params
    side = STEP_HOST[step]
    host = _hosts(operation)[side]
    if host is None:  # the host row was deleted mid-move: the step can never run
        params["steps"].append({"step": step, "host": params[f"{side}_name"], "state": "failed",
                                "error": "the host was removed from Berth"})
        raise MoveError(f"Host {params[f'{side}_name']} was removed from Berth.")
    prefix = "target" if side == "target" else "source"
    spec = _spec_on(instance, host, address=params[f"{prefix}_address"], uid_slot=params[f"{prefix}_uid_slot"])
    params.update(step=step, step_host=host.pk, step_sent_at=timezone.now().isoformat())
    params["steps"].append({"step": step, "host": host.name, "state": "queued",
                            "sent_at": params["step_sent_at"]})
    kwargs = {"operation_id": operation.pk, "action": HOST_ACTION, "spec": spec,
              "params": {"step": step, **_step_params(params, step)}}
    queue = host.queue
    transaction.on_commit(lambda: celery_app.send_task(RUN_OPERATION_TASK, kwargs=kwargs, queue=queue))


# --- step reports -----------------------------------------------------------------------------

def record_step(operation_id: int, *, step: str, host_name: str, event: str, ok: bool | None = None,
                error: str = "", power_state: str | None = None, progress: str = "",
                result: dict | None = None, _from_panel: bool = False, **_other: Any) -> None:
    """A host's report on one step of a move (``berth.panel.step_report``): started, progress
    or finished. Idempotent: a report about another step than the current one, or from
    another host than the one the step was sent to, changes nothing."""
    with transaction.atomic():
        try:
            operation = (Operation.objects.select_for_update(of=("self",)).select_related("instance")
                         .get(pk=operation_id))
        except Operation.DoesNotExist:
            logger.warning("step report for unknown operation %s ignored", operation_id)
            return
        params = operation.params
        if operation.action != A.MOVE or operation.is_finished or params.get("step") != step:
            return
        host_id = Host.objects.filter(name=host_name).values_list("pk", flat=True).first()
        if host_id != params.get("step_host") and not _from_panel:
            logger.warning("report of step %s of move %s from host %s ignored: the step was sent to %s",
                           step, operation_id, host_name, params.get("step_host"))
            return
        entry = params["steps"][-1]
        now = timezone.now()
        fields = ["params", "progress"]
        if operation.state == Operation.State.QUEUED:
            operation.state, operation.started_at = Operation.State.RUNNING, now
            fields += ["state", "started_at"]
        label = _label(operation, step)
        if event == "started":
            entry.update(state="running", started_at=now.isoformat())
            operation.progress = label
        elif event == "progress":
            operation.progress = f"{label}: {progress}"[:200]
        elif event == "finished":
            entry.update(state="succeeded" if ok else "failed", finished_at=now.isoformat())
            if error:
                entry["error"] = error
            if result:
                entry["result"] = result
            instance = Instance.objects.select_for_update(of=("self",)).select_related("host", "plan", "image").get(
                pk=operation.instance_id)
            if ok:
                _advance(operation, instance, step, result or {}, power_state)
            else:
                _failed(operation, instance, step, error or "the host reported a failure without details",
                        power_state)
            fields = ["params", "progress", "state", "error", "started_at", "finished_at"]
        else:
            return
        operation.save(update_fields=sorted(set(fields)))
        publish_operation(operation)


def _observe(operation: Operation, instance: Instance, power_state: str | None) -> None:
    """The instance's state follows what the step left (stopped for the copy, running again)."""
    if operation.params.get("was_suspended"):
        return  # a suspended instance stays suspended (and off) wherever it is
    target = POWER_TO_STATE.get(power_state or "")
    instance.refresh_from_db(fields=["state"])
    if target and target != instance.state and target in ALLOWED_TRANSITIONS[instance.state]:
        transition(instance.pk, target)


def _advance(operation: Operation, instance: Instance, step: str, result: dict, power_state: str | None) -> None:
    params = operation.params
    if step == "export":
        params.update(sha256=result.get("sha256", ""), path=result.get("path") or params["path"],
                      size_bytes=result.get("size_bytes"))
        _observe(operation, instance, power_state)
        _next(operation, instance, "import")
    elif step == "import":
        _switch(operation, instance)
        _observe(operation, instance, power_state)
        _next(operation, instance, "cleanup")
    elif step == "cleanup":
        _finish(operation, instance, ok=True,
                note=f"Moved from {params['source_name']} to {params['target_name']}{_took(operation)}.")
    elif step == "abort":
        _next(operation, instance, "recover")
    elif step == "recover":
        _observe(operation, instance, power_state)
        _finish(operation, instance, ok=False)


def _failed(operation: Operation, instance: Instance, step: str, error: str, power_state: str | None) -> None:
    params = operation.params
    host = params["target_name"] if STEP_HOST[step] == "target" else params["source_name"]
    if step in ("export", "import"):
        params["failure"] = _sentence(f"The {step} on {host} failed: {error}")
        if step == "export":
            _observe(operation, instance, power_state)
        _next(operation, instance, "abort" if step == "import" else "recover")
    elif step == "abort":
        params["failure"] += f" Cleaning {host} failed too ({error.rstrip('.')}): check it for a leftover copy."
        _next(operation, instance, "recover")
    elif step == "recover":
        params["failure"] += " " + _sentence(f"Restoring the instance on {host} failed too: {error}")
        _observe(operation, instance, power_state)
        _finish(operation, instance, ok=False)
    elif step == "cleanup":
        # The instance runs on the target (switched already): the move did its job; what is
        # left on the source is reported, never deleted behind the admin's back.
        audit.record(action="instance.move.cleanup_failed", source=Operation.Source.SYSTEM, target=instance,
                     message=f"The old copy of {instance.hostname} on {host} was not removed: {error}",
                     data={"operation": operation.pk, "host": host})
        _finish(operation, instance, ok=True,
                note=f"Moved to {params['target_name']}; the old copy on {host} was not removed: {error}")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _next(operation: Operation, instance: Instance, step: str) -> None:
    try:
        _send_step(operation, instance, step)
    except MoveError as exc:
        params = operation.params
        if step == "cleanup":  # switched over already: the move is done, the old copy stays
            _finish(operation, instance, ok=True, note=f"Moved to {params['target_name']}; the old copy "
                                                       f"on {params['source_name']} was not removed: {exc}")
            return
        params["failure"] = (params.get("failure") or "") + f" {exc}"
        _finish(operation, instance, ok=False)
        return
    operation.progress = _label(operation, step)


def _switch(operation: Operation, instance: Instance) -> None:
    """The target runs it: the records follow (host, uid range, address); the reservation ends."""
    params = operation.params
    hosts = _hosts(operation)
    target = hosts["target"]
    IpAddress.objects.filter(instance=instance).exclude(pool__host=target).delete()
    instance.host = target
    instance.uid_slot = params["target_uid_slot"]
    instance.save(update_fields=["host", "uid_slot", "updated_at"])
    params.pop("reserve_host", None)
    params.pop("reserve_uid_slot", None)
    params["switched_at"] = timezone.now().isoformat()
    audit.record(action="instance.moved", source=Operation.Source.SYSTEM, target=instance,
                 message=f"{instance.hostname} now runs on {target.name} (address {params['target_address']}).",
                 data={"operation": operation.pk, "from": params["source_name"], "to": target.name})


def _took(operation: Operation) -> str:
    if operation.started_at is None:
        return ""
    seconds = (timezone.now() - operation.started_at).total_seconds()
    size = operation.params.get("size_bytes")
    return f" in {seconds:.0f} s" + (f" ({_size(size)} copied)" if size else "")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _finish(operation: Operation, instance: Instance, *, ok: bool, note: str = "") -> None:
    now = timezone.now()
    params = operation.params
    operation.state = Operation.State.SUCCEEDED if ok else Operation.State.FAILED
    operation.started_at = operation.started_at or now
    operation.finished_at = now
    if ok:
        operation.error, operation.progress = "", note[:200]
    else:
        operation.error = (params.get("failure") or "The move failed.").strip() + (
            f" {instance.hostname} stays on {params['source_name']}.")
        operation.progress = ""
        # The reservation on the target ends with the operation; its address goes back.
        IpAddress.objects.filter(instance=instance, pool__host_id=params["target_host"]).exclude(
            pool__host_id=instance.host_id).delete()
        audit.record(action="operation.move.failed", source=Operation.Source.SYSTEM, target=instance,
                     message=operation.error, data={"operation": operation.pk})
    # What other apps keep per instance follows the move too (e.g. snapshots, which stay behind
    # with the source's copy and are destroyed with it).
    for hook in results.FINISHED_HOOKS:
        hook(operation, instance, ok=ok, result={})


# --- the reaper -------------------------------------------------------------------------------

def reap_move(operation: Operation, client, *, timed_out: datetime) -> bool:
    """Judge the current step of a move by its lease on its host (like ``reaping.py`` does
    any operation): apply a report that got lost, fail a step whose worker died or that no
    worker took up (which leads to abort/recover). True when the operation has ended."""
    params = operation.params
    step = params.get("step")
    if not step:
        return False
    host = Host.objects.filter(pk=params.get("step_host")).first()
    sent_at = datetime.fromisoformat(params["step_sent_at"]) if params.get("step_sent_at") else operation.created_at
    if host is None:
        record_step(operation.pk, step=step, host_name="", event="finished", ok=False,
                    error="its host was removed from Berth", _from_panel=True)
    else:
        verdict = leases.reap(client, host.name, lease_id(operation.pk, step), when_absent=sent_at < timed_out)
        if verdict.state == leases.DONE and verdict.report:
            logger.warning("applying the lost report of step %s of move %s", step, operation.pk)
            record_step(**verdict.report)
        elif verdict.state == leases.ABANDONED:
            started = params["steps"] and params["steps"][-1].get("state") == "running"
            if started:
                why = (f"the worker on host {host.name} stopped while running it and did not come back "
                       f"within {leases.REAP_GRACE_SECONDS} s")
            else:
                minutes = int(settings.BERTH_OPERATION_TIMEOUT.total_seconds() // 60)
                why = f"host {host.name} did not take it up within {minutes} minutes (its worker is not running)"
            record_step(operation.pk, step=step, host_name=host.name, event="finished", ok=False, error=why,
                        _from_panel=True)
        else:
            return False
    operation.refresh_from_db(fields=["state"])
    return operation.is_finished


# --- evacuating a host ------------------------------------------------------------------------

def evacuate_host(host: Host, *, actor, source: str = Operation.Source.UI) -> list[Operation]:
    """One move per instance on the draining ``host``, each to where placement finds room.
    An instance that cannot be moved now gets a failed move saying why and stays where it is."""
    _require_staff(actor)
    host = Host.objects.get(pk=host.pk)
    if not host.is_draining:
        raise MoveError(f"Drain {host.name} first: evacuating moves everything off it, and new "
                        "instances must not land on it meanwhile.")
    batch = f"{timezone.now():%Y%m%d%H%M%S}-{uuid_lib.uuid4().hex[:6]}"
    operations = []
    for instance in host.instances.live().order_by("hostname", "pk"):
        try:
            operations.append(request_move(instance=instance, actor=actor, source=source, evacuation=batch))
        except MoveError as exc:
            operations.append(_refused(instance, host, actor=actor, source=source, batch=batch, reason=str(exc)))
    audit.record(action="host.evacuate", source=source, actor=actor, target=host,
                 message=f"Evacuating {host.name}: {len(operations)} instance(s); "
                         f"{sum(op.state == Operation.State.FAILED for op in operations)} could not be moved now.",
                 data={"evacuation": batch})
    return operations


def _refused(instance: Instance, host: Host, *, actor, source: str, batch: str, reason: str) -> Operation:
    now = timezone.now()
    operation = Operation.objects.create(
        instance=instance, action=A.MOVE, source=source, state=Operation.State.FAILED,
        requested_by=actor if actor is not None and actor.is_authenticated else None,
        params={"source_host": host.pk, "source_name": host.name, "evacuation": batch, "refused": True,
                "steps": []},
        error=f"Not moved: {reason}", started_at=now, finished_at=now,
    )
    publish_operation(operation)
    return operation


def evacuation_progress(host: Host) -> list[Operation]:
    """The moves of ``host``'s last evacuation, for its staff page."""
    last = (Operation.objects.filter(action=A.MOVE, params__source_host=host.pk, params__has_key="evacuation")
            .order_by("-created_at", "-id").values_list("params__evacuation", flat=True).first())
    if not last:
        return []
    return list(Operation.objects.filter(action=A.MOVE, params__evacuation=last)
                .select_related("instance").order_by("instance__hostname", "pk"))


def move_targets(instance: Instance) -> list[tuple[Host, str]]:
    """Every other host with why it cannot take ``instance`` now ('' when it can), for the
    staff form."""
    allowed = set(instance.plan.hosts.values_list("pk", flat=True))
    result = []
    for host in Host.objects.select_related("ip_pool").exclude(pk=instance.host_id).order_by("name"):
        problem = _unfit(host, instance.host, instance, allowed) if instance.host else "the instance is on no host"
        if not problem and _keep_or_free_address(host, "") is None:
            problem = "no free IPv4 address"
        result.append((host, problem))
    return result
