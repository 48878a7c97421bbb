"""A host's configuration, read from its environment (never from the panel's database).

`manage.py host add` prints these variables for a new host; `make run` sets them for the
local one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from workers.drivers.base import HostConfig

REPO_DIR = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class HostSettings:
    host: HostConfig
    redis_url: str
    heartbeat_seconds: float = 5.0


def host_key_prefix(host_name: str) -> str:
    """Redis keys private to one host: its Redis user (panel/hosts/credentials.py) may touch
    these and no other host's."""
    return f"berth:host:{host_name}:"


def broker_transport_options(host_name: str) -> dict[str, object]:
    """Kombu options for a host's Celery app. Messages in flight are kept under the host's own
    keys instead of the shared ``unacked`` hash, which holds every worker's messages."""
    prefix = host_key_prefix(host_name)
    return {
        "visibility_timeout": 3600,
        "unacked_key": prefix + "unacked",
        "unacked_index_key": prefix + "unacked_index",
        "unacked_mutex_key": prefix + "unacked_mutex",
    }


# Message headers of a signed report (see sign_reports).
SIGNER_HEADER = "berth_host"
SIGNATURE_HEADER = "berth_sig"


def report_key(secret: str) -> bytes:
    """The key a host signs its reports with: the SHA-256 of its secret, which is what the panel
    keeps (Host.credential_hash), so the panel never holds the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest().encode()


def report_signature(key: bytes, *, task: str, task_id: str, args: Any, kwargs: Any) -> str:
    """HMAC-SHA256 of the task name, id and arguments as JSON (tuples and lists alike, so the
    panel computes the same from what it decoded)."""
    payload = json.dumps([task, task_id, list(args or ()), kwargs or {}], sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def sign_reports(settings: HostSettings) -> bool:
    """Sign every task this process sends with the host's credential (the password of its Redis
    URL), so the panel can tell which host a report really comes from. Redis's ACL keeps hosts
    out of each other's keys, but it cannot see what a message says; the signature can."""
    secret = unquote(urlsplit(settings.redis_url).password or "")
    if not secret:
        return False
    from celery.signals import before_task_publish  # noqa: PLC0415 (only host processes sign)

    key, name = report_key(secret), settings.host.name

    def sign(sender=None, body=None, headers=None, **_: Any) -> None:
        if headers is None or not isinstance(body, (list, tuple)) or len(body) < 2:
            return
        headers[SIGNER_HEADER] = name
        headers[SIGNATURE_HEADER] = report_signature(
            key, task=headers.get("task", sender), task_id=headers.get("id", ""), args=body[0], kwargs=body[1]
        )

    before_task_publish.connect(sign, weak=False, dispatch_uid="berth-sign-reports")
    return True


def _required(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; run the command `manage.py host add` printed.")
    return value


def load_host_settings(env: dict[str, str] | None = None) -> HostSettings:
    """The settings of a host: from ``env``, or from this process's environment, which makes
    this process that host (its worker or agent), so everything it sends is signed."""
    own = env is None
    env = dict(os.environ if env is None else env)
    name = _required(env, "BERTH_HOST_NAME")
    host = HostConfig(
        name=name,
        state_dir=Path(env.get("BERTH_STATE_DIR") or REPO_DIR / "var" / "hosts" / name),
        image_dir=Path(env.get("BERTH_IMAGE_DIR") or REPO_DIR / "var" / "images"),
        bridge=env.get("BERTH_BRIDGE", "berth0"),
        gateway=_required(env, "BERTH_GATEWAY"),
        prefixlen=int(env.get("BERTH_PREFIXLEN", "24")),
        uid_base=int(env.get("BERTH_UID_BASE", "1000000")),
        uid_slots=int(env.get("BERTH_UID_SLOTS", "1024")),
        libvirt_uri=env.get("BERTH_LIBVIRT_URI", "qemu:///system"),
        cgroup_base=env.get("BERTH_CGROUP_BASE") or None,
    )
    settings = HostSettings(
        host=host,
        redis_url=env.get("BERTH_REDIS_URL") or env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        heartbeat_seconds=float(env.get("BERTH_HEARTBEAT_SECONDS", "5")),
    )
    if own:
        sign_reports(settings)
    return settings
