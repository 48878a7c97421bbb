"""Sending operations to hosts: the instance spec as JSON, on the host's own queue, after commit.

Hosts have no database access; the spec carries everything the driver needs.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from panel.celery import app as celery_app
from panel.instances.models import Instance, Operation

RUN_OPERATION_TASK = "berth.host.run_operation"


def build_spec(instance: Instance) -> dict[str, Any]:
    host = instance.host
    pool = host.ip_pool
    addresses = instance.ipv4
    plan = instance.plan
    return {
        "uuid": instance.uuid.hex,
        "kind": instance.kind,
        "hostname": instance.hostname,
        "vcpus": plan.vcpus,
        "memory_mib": plan.memory_mib,
        "disk_gib": plan.disk_gib,
        "pids_max": plan.pids_max,
        "image": {
            "name": instance.image.name,
            "path": instance.image.path,
            "checksum": instance.image.checksum,
        },
        "network": {
            "address": addresses[0] if addresses else "",
            "prefixlen": pool.prefixlen,
            "gateway": pool.gateway,
            "mac": instance.mac,
            "bridge": host.bridge,
        },
        "uid_slot": instance.uid_slot or 0,
        "root_password": instance.root_password_hash,
        "ssh_keys": [k for k in instance.ssh_keys.splitlines() if k.strip()],
        # Application images: the order's command (replaces the image's Cmd) and environment;
        # only when given, so that a host that does not know them yet is not sent them.
        **({"command": list(instance.app_command)} if instance.app_command else {}),
        **({"env": dict(instance.app_env)} if instance.app_env else {}),
        # One customer's containers reach each other on the bridge; other customers' never.
        "extra": {"network_group": f"customer-{instance.customer_id}"},
    }


def send_operation(operation: Operation) -> None:
    """Queue ``operation`` on its host now (use dispatch_operation inside a transaction)."""
    instance = operation.instance
    celery_app.send_task(
        RUN_OPERATION_TASK,
        kwargs={
            "operation_id": operation.pk,
            "action": operation.action,
            "spec": build_spec(instance),
            "params": operation.params,
        },
        queue=instance.host.queue,
    )


def dispatch_operation(operation: Operation) -> None:
    transaction.on_commit(lambda: send_operation(operation))
