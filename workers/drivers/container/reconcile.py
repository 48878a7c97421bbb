"""Finding a host's container objects that no container state directory accounts for.

Used by reconciliation: whatever a crash or a person left behind (a shim still running a
container whose directory was deleted, a cgroup, a veth, firewall rules) is *listed* with the
container it was named after, for an admin to look at. Nothing here deletes anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import HostConfig
from workers.drivers.container import firewall, network
from workers.drivers.container.cgroups import CgroupLayout
from workers.drivers.container.state import UUID_RE, containers_dir

VETH_RE = re.compile(r"^bv([0-9a-f]{12})$")


@dataclass(frozen=True)
class Orphan:
    ref: str  # the container's uuid, or its first 12 hex digits for links and firewall rules
    kind: str  # "process" | "cgroup" | "veth" | "firewall"
    name: str  # pid, cgroup directory, link name or nft chain

    def __str__(self) -> str:
        return f"{self.kind} {self.name} (container {self.ref})"


def find_orphans(host: HostConfig, layout: CgroupLayout, known: set[str]) -> list[Orphan]:
    """Objects named after a container of ``host`` whose uuid is not in ``known``."""
    prefixes = {uuid[:12] for uuid in known}
    found = [Orphan(uuid, "process", str(pid)) for pid, uuid in shims_of_host(host) if uuid not in known]
    for uuid in layout.children(host.cgroup_name):
        if UUID_RE.match(uuid) and uuid not in known:
            found += [Orphan(uuid, "cgroup", str(base / host.cgroup_name / uuid))
                      for base in layout.bases.values() if (base / host.cgroup_name / uuid).is_dir()]
    for port in network.bridge_ports(host.bridge):
        if (m := VETH_RE.match(port)) and m.group(1) not in prefixes:
            found.append(Orphan(m.group(1), "veth", port))
    for chain in firewall.port_chains(host):
        if (m := VETH_RE.match(chain.removeprefix("ct_"))) and m.group(1) not in prefixes:
            found.append(Orphan(m.group(1), "firewall", chain))
    return found


def shims_of_host(host: HostConfig) -> list[tuple[int, str]]:
    """(pid, uuid) of every berth-shim serving a console below this host's state dir."""
    prefix = str(containers_dir(host)) + "/"
    shims = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"berth-shim") or b"-S" not in argv[:-1]:
            continue
        socket_path = os.fsdecode(argv[argv.index(b"-S") + 1])
        if socket_path.startswith(prefix):
            uuid = socket_path[len(prefix):].split("/", 1)[0]
            shims.append((int(entry), uuid))
    return shims
