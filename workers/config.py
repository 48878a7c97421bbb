"""A host's configuration, read from its environment (never from the panel's database).

`manage.py host add` prints these variables for a new host; `make run` sets them for the
local one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.drivers.base import HostConfig

REPO_DIR = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class HostSettings:
    host: HostConfig
    redis_url: str
    heartbeat_seconds: float = 5.0


def _required(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set; run the command `manage.py host add` printed.")
    return value


def load_host_settings(env: dict[str, str] | None = None) -> HostSettings:
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
    )
    return HostSettings(
        host=host,
        redis_url=env.get("BERTH_REDIS_URL") or env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        heartbeat_seconds=float(env.get("BERTH_HEARTBEAT_SECONDS", "5")),
    )
