"""How Berth names its libvirt domains and files, so several hosts can share one libvirtd.

Domain name ``berth-<host>-<uuid[:12]>``; the ``<metadata>`` element records the host name
and the full instance uuid, and is what ownership checks read. libvirt's own domain UUID is
the instance uuid XORed with a mask derived from the host name: unique per (host, instance),
so while an instance moves between two hosts that share one libvirtd both copies can be
defined at once, and reversible, so lifecycle events (which may arrive after the domain and
its metadata are gone) still name the instance. Domains defined before this scheme carry the
instance uuid itself; ``berth_uuid`` recognises both by the name's uuid prefix.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid as uuid_lib
from pathlib import Path

from workers.drivers.base import DriverError, HostConfig

METADATA_NS = "https://berth.dev/xmlns/instance/1"
METADATA_PREFIX = "berth"

_UUID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_uuid(uuid: str) -> str:
    """Berth uuids are 32 lowercase hex characters; anything else is refused before use."""
    if not _UUID_RE.match(uuid):
        raise DriverError(f"invalid instance uuid {uuid!r}: expected 32 lowercase hex characters")
    return uuid


def domain_name(host: HostConfig, uuid: str) -> str:
    return f"berth-{host.name}-{check_uuid(uuid)[:12]}"


def owns_domain_name(host: HostConfig, name: str) -> bool:
    """True for names this host made: the prefix alone is not enough (host "a" vs "a-b")."""
    prefix = f"berth-{host.name}-"
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return bool(re.fullmatch(r"[0-9a-f]{12}", rest))


@functools.cache
def _host_mask(host_name: str) -> int:
    digest = hashlib.sha256(f"berth libvirt uuid/{host_name}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


def libvirt_uuid(host: HostConfig, uuid: str) -> str:
    """The domain UUID of ``host``'s copy of instance ``uuid``, in libvirt's dashed form."""
    return str(uuid_lib.UUID(int=int(check_uuid(uuid), 16) ^ _host_mask(host.name)))


def berth_uuid(host: HostConfig, domain: str, libvirt_uuid_string: str) -> str:
    """The instance uuid of ``host``'s domain named ``domain`` with that libvirt UUID."""
    raw = libvirt_uuid_string.replace("-", "").lower()
    decoded = f"{int(raw, 16) ^ _host_mask(host.name):032x}"
    return decoded if domain.endswith(f"-{decoded[:12]}") else raw


def instance_dir(host: HostConfig, uuid: str) -> Path:
    """Overlay disk, config disk and serial log of one instance."""
    return host.state_dir / "vms" / check_uuid(uuid)
