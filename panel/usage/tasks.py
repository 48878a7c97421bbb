"""Usage reports from host agents (queue ``panel``).

Every 30 s each host agent sends::

    berth.panel.usage_samples(host_name="h1", samples=[
        {"uuid": "<instance uuid, hex>",
         "cpu_seconds": 12.5,          # CPU time since the instance (re)started (float)
         "memory_bytes": 52428800,     # memory in use now
         "net_rx_bytes": 1024,         # bytes received since the instance (re)started
         "net_tx_bytes": 2048,         # bytes sent since the instance (re)started
         "disk_used_bytes": 10485760,  # disk space in use now
         "at": "2025-01-01T12:00:00Z"},  # when it was read: ISO 8601 (UTC if no offset) or Unix time
        ...])

Containers: cgroup counters (cpuacct.usage or cpu.stat usage_usec, memory usage, the veth's
counters, the upper dir's size); VMs: libvirt domain stats (cpu.time, balloon.rss,
net.*.rx/tx.bytes, block.*.allocation). Counters may go back to zero after a restart; the
panel notices. A retried report is stored once.
"""

from typing import Any

from celery import shared_task

from panel.usage import services


@shared_task(name="berth.panel.usage_samples")
def usage_samples(host_name: str, samples: list[dict[str, Any]]) -> int:
    return services.record_samples(host_name=host_name, samples=samples)
