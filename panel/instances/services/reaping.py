"""Ending operations no host worker will finish, so none stays queued or running for ever.

Run by beat every few seconds (``berth.panel.reap_stale_operations``). Each unfinished
operation is judged by its lease (``workers/leases.py``), in one atomic step on Redis:

- finished on the host, but its report never arrived (lost in a Redis restart): applied now;
- running, and its worker has not renewed the lease for ``REAP_GRACE_SECONDS`` (it died and
  was not restarted in time to take the operation over): failed, and fenced so that a late
  delivery of the task can never run it afterwards;
- queued for longer than ``BERTH_OPERATION_TIMEOUT`` without any worker taking it (the host's
  worker is down, or the host is gone): failed and fenced the same way;
- anything else is left alone: a worker that keeps renewing its lease is working, however
  long the operation takes.

Failing an operation goes through ``record_operation_finished``, like a host's own report: a
create or terminate leaves the instance in ``error`` for its owner to retry or terminate.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from django.conf import settings
from django.utils import timezone

from panel.instances.models import Operation
from panel.instances.services.moves import reap_move
from panel.instances.services.results import record_operation_finished
from workers import leases

logger = logging.getLogger(__name__)


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def reap_operations(*, now: datetime | None = None) -> list[int]:
    """Judge every unfinished operation; returns the ids that were ended here."""
    now = now or timezone.now()
    timed_out = now - settings.BERTH_OPERATION_TIMEOUT
    unfinished = (
        Operation.objects.filter(state__in=(Operation.State.QUEUED, Operation.State.RUNNING))
        .exclude(instance__host=None)
        .select_related("instance__host")
        .order_by("created_at")
    )
    ended = []
    client = _client()
    try:
        for operation in unfinished:
            host = operation.instance.host
            since = operation.started_at or operation.created_at
            if operation.action == Operation.Action.MOVE:  # judged step by step, on each step's host
                try:
                    if reap_move(operation, client, timed_out=timed_out):
                        ended.append(operation.pk)
                except redis.RedisError as exc:
                    logger.warning("cannot judge operations while Redis is unreachable: %s", exc)
                    break
                continue
            try:
                verdict = leases.reap(client, host.name, operation.pk, when_absent=since < timed_out)
            except redis.RedisError as exc:
                # The workers cannot reach Redis either; judge again when it is back.
                logger.warning("cannot judge operations while Redis is unreachable: %s", exc)
                break
            if verdict.state == leases.DONE and verdict.report:
                logger.warning("applying the lost report of operation %s", operation.pk)
                record_operation_finished(**verdict.report)
            elif verdict.state == leases.ABANDONED:
                record_operation_finished(operation.pk, ok=False, error=_why(operation, host.name))
            else:
                continue
            ended.append(operation.pk)
    finally:
        client.close()
    return ended


def _why(operation: Operation, host_name: str) -> str:
    if operation.state == Operation.State.RUNNING:
        return (
            f"The worker on host {host_name} stopped while running this operation and did not "
            f"come back within {leases.REAP_GRACE_SECONDS} s to finish it; it will not run again."
        )
    minutes = int(settings.BERTH_OPERATION_TIMEOUT.total_seconds() // 60)
    return (
        f"Host {host_name} did not take this operation up within {minutes} minutes (its worker "
        "is not running); it was cancelled and will not run."
    )
