"""How Berth names its libvirt domains and files, so several hosts can share one libvirtd.

Domain name ``berth-<host>-<uuid[:12]>``; libvirt's own domain UUID is the instance uuid, so
``virsh dominfo`` shows the id the panel shows; the ``<metadata>`` element records the host
name and full uuid, and is what ownership checks read.
"""

from __future__ import annotations

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


def libvirt_uuid(uuid: str) -> str:
    """The instance uuid in libvirt's dashed form."""
    return str(uuid_lib.UUID(hex=check_uuid(uuid)))


def berth_uuid(libvirt_uuid_string: str) -> str:
    return libvirt_uuid_string.replace("-", "").lower()


def instance_dir(host: HostConfig, uuid: str) -> Path:
    """Overlay disk, config disk and serial log of one instance."""
    return host.state_dir / "vms" / check_uuid(uuid)
