"""Usage metering: storing what host agents sample, recording state changes, and answering
"how much did this instance use between A and B" for billing.

The answer is additive: usage(A, B) + usage(B, C) == usage(A, C), so invoices for adjacent
periods never count anything twice or lose anything.

- running_seconds: from the state history (exact to each change); ``rebooting`` counts as
  running, the instance keeps its resources through a reboot.
- cpu_seconds, net_rx_bytes, net_tx_bytes: cumulative counters; each increment between two
  samples is spread evenly over the time between them and the period takes its share. A
  counter that went down was reset by a restart: the increment is then the new value, spread
  from the restart (or the earlier sample, whichever is later).
- memory_mib_hours: memory in use, integrated over time (linear between samples; nothing
  across a gap of more than MAX_SAMPLE_GAP, when the instance was not running).
- disk_used_bytes: the most disk used at any sample in the period.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from panel.instances.models import Instance, InstanceState
from panel.usage.models import InstanceStateChange, UsageSample

logger = logging.getLogger(__name__)

RUNNING_STATES = frozenset({InstanceState.RUNNING, InstanceState.REBOOTING})
MAX_SAMPLE_GAP = timedelta(seconds=90)  # the agent samples every 30 s
MIB = 1024 * 1024
COUNTERS = ("cpu_seconds", "net_rx_bytes", "net_tx_bytes")


# --- Writing --------------------------------------------------------------------------------

def record_state_change(*, instance: Instance, previous_state: str) -> InstanceStateChange:
    """Called by ``transition()`` inside its transaction, for every change of state."""
    return InstanceStateChange.objects.create(
        instance=instance, from_state=previous_state, to_state=instance.state, at=timezone.now()
    )


def _parse_at(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is not None and timezone.is_naive(parsed):
            parsed = parsed.replace(tzinfo=UTC)
        return parsed
    return None


def _sample_values(item: dict[str, Any]) -> dict[str, Any] | None:
    try:
        values = {
            "cpu_seconds": float(item["cpu_seconds"]),
            "memory_bytes": int(item["memory_bytes"]),
            "net_rx_bytes": int(item["net_rx_bytes"]),
            "net_tx_bytes": int(item["net_tx_bytes"]),
            "disk_used_bytes": int(item["disk_used_bytes"]),
        }
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if values["cpu_seconds"] < 0 or values["cpu_seconds"] != values["cpu_seconds"]:
        return None
    if any(values[k] < 0 or values[k] >= 2**63 for k in values if k != "cpu_seconds"):
        return None
    return values


def record_samples(*, host_name: str, samples: Iterable[dict[str, Any]]) -> int:
    """Store one host's report; returns how many samples were accepted.

    Only instances placed on ``host_name`` are accepted: a host cannot write another host's
    usage. Malformed items are logged and skipped; a retried report changes nothing.
    """
    parsed: list[tuple[str, datetime, dict[str, Any]]] = []
    for item in samples:
        try:
            uuid_hex = uuid.UUID(str(item["uuid"])).hex
        except (KeyError, TypeError, ValueError):
            logger.warning("usage sample from %s without a valid uuid skipped", host_name)
            continue
        at, values = _parse_at(item.get("at")), _sample_values(item)
        if at is None or values is None:
            logger.warning("malformed usage sample for %s from %s skipped", uuid_hex, host_name)
            continue
        parsed.append((uuid_hex, at, values))
    if not parsed:
        return 0
    ids = {
        instance_uuid.hex: pk
        for instance_uuid, pk in Instance.objects.filter(
            host__name=host_name, uuid__in=[u for u, _, _ in parsed]
        ).values_list("uuid", "pk")
    }
    rows = [
        UsageSample(instance_id=ids[u], at=at, **values) for u, at, values in parsed if u in ids
    ]
    UsageSample.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# --- Reading --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    start: datetime
    end: datetime
    running_seconds: float
    cpu_seconds: float
    memory_mib_hours: float
    net_rx_bytes: int
    net_tx_bytes: int
    disk_used_bytes: int


def _overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())


def _state_segments(instance: Instance, changes: list[InstanceStateChange], until: datetime):
    """(from, to, state) for the instance's whole life up to ``until``."""
    state = changes[0].from_state if changes else instance.state
    at = instance.created_at
    for change in changes:
        if change.at > at:
            yield at, change.at, state
        at, state = max(at, change.at), change.to_state
    if until > at:
        yield at, until, state


def _run_starts(changes: list[InstanceStateChange]) -> list[datetime]:
    return [c.at for c in changes if c.to_state in RUNNING_STATES and c.from_state not in RUNNING_STATES]


def _last_before(times: list[datetime], moment: datetime) -> datetime | None:
    earlier = [t for t in times if t <= moment]
    return earlier[-1] if earlier else None


def _counter_usage(samples: list[UsageSample], name: str, start: datetime, end: datetime,
                   first_baseline: datetime | None, run_starts: list[datetime]) -> float:
    total = 0.0
    previous = None
    for sample in samples:
        value = getattr(sample, name)
        if previous is None:
            # The first sample ever counts from zero since the instance started.
            if first_baseline is None:
                previous = sample
                continue
            increment, since = value, first_baseline
        elif value >= getattr(previous, name):
            increment, since = value - getattr(previous, name), previous.at
        else:  # reset by a restart: counted from zero, from the restart if we know it
            restart = _last_before(run_starts, sample.at)
            increment = value
            since = max(previous.at, restart) if restart else previous.at
        span = (sample.at - since).total_seconds()
        if span <= 0:
            if start <= sample.at <= end and since >= start:
                total += increment
        else:
            total += increment * _overlap(since, sample.at, start, end) / span
        previous = sample
    return total


def _memory_mib_hours(samples: list[UsageSample], start: datetime, end: datetime) -> float:
    area = 0.0  # MiB·seconds
    for left, right in zip(samples, samples[1:], strict=False):
        span = (right.at - left.at).total_seconds()
        if span <= 0 or right.at - left.at > MAX_SAMPLE_GAP:
            continue
        a, b = max(left.at, start), min(right.at, end)
        if b <= a:
            continue
        slope = (right.memory_bytes - left.memory_bytes) / span
        at_a = left.memory_bytes + slope * (a - left.at).total_seconds()
        at_b = left.memory_bytes + slope * (b - left.at).total_seconds()
        area += (at_a + at_b) / 2 * (b - a).total_seconds() / MIB
    return area / 3600


def usage_for_period(
    *, instance: Instance, start: datetime | None = None, end: datetime | None = None
) -> Usage:
    """What ``instance`` used from ``start`` to ``end`` (defaults: its creation, now).

    The end is clamped to now: nothing is known about the future.
    """
    now = timezone.now()
    start = start or instance.created_at
    end = min(end or now, now)
    if end < start:
        end = start
    changes = list(InstanceStateChange.objects.filter(instance=instance).order_by("at", "id"))
    running = sum(
        _overlap(seg_start, seg_end, start, end)
        for seg_start, seg_end, state in _state_segments(instance, changes, end)
        if state in RUNNING_STATES
    )

    base = UsageSample.objects.filter(instance=instance)
    before = base.filter(at__lte=start).order_by("-at").first()
    after = base.filter(at__gt=end).order_by("at").first()
    within = list(base.filter(at__gt=start, at__lte=end).order_by("at"))
    samples = ([before] if before else []) + within + ([after] if after else [])
    run_starts = _run_starts(changes)
    first_baseline = None
    if before is None and samples:
        # samples[0] is the instance's first sample: its counters started when it last started.
        first_baseline = _last_before(run_starts, samples[0].at) or instance.created_at
    counters = {
        name: _counter_usage(samples, name, start, end, first_baseline, run_starts)
        for name in COUNTERS
    }
    in_period = [s.disk_used_bytes for s in within]
    if before is not None and start - before.at <= MAX_SAMPLE_GAP:
        in_period.append(before.disk_used_bytes)
    return Usage(
        start=start,
        end=end,
        running_seconds=running,
        cpu_seconds=counters["cpu_seconds"],
        memory_mib_hours=_memory_mib_hours(samples, start, end),
        net_rx_bytes=round(counters["net_rx_bytes"]),
        net_tx_bytes=round(counters["net_tx_bytes"]),
        disk_used_bytes=max(in_period, default=0),
    )
