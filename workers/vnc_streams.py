"""Where graphical consoles (VNC) meet Redis, shared by the host agent and the web consumer.

A VM's VNC server listens on the host's loopback only. For each viewer the web tier asks the
host's agent (over the agent's command channel) to open a *session*: the agent connects to
the domain's VNC port and relays the raw RFB bytes through two Redis lists, one per
direction. Lists, not pub/sub: RFB is a byte stream, so nothing may be lost before a side
is listening, and order must hold. An empty item ends a direction. The viewer keeps an
"alive" key fresh; when it expires (web server gone without saying goodbye) the agent drops
the session. So the web tier never reaches libvirt or the host itself, only Redis, which it
shares with every host already — web servers and hosts can be different machines.

Every key lives under the host's own prefix (``workers.config.host_key_prefix``), which is
all a host's Redis user may touch: a host cannot read another host's screens.
"""

from __future__ import annotations

import json
import re

from workers.config import host_key_prefix

SESSION_RE = re.compile(r"^[0-9a-f]{32}$")
EOF = b""  # an empty item closes that direction
KEY_TTL = 30  # seconds a session's keys outlive their last refresh
ALIVE_REFRESH = 10  # seconds between the viewer's refreshes of its alive key
# Seconds a BLPOP waits: below redis-py 8's default socket timeout (5 s), which would
# otherwise end an idle blocking read with a TimeoutError.
BLOCK_SECONDS = 4
OPEN_TIMEOUT = 5.0  # seconds the viewer waits for the agent to open the session
MAX_QUEUED = 64  # chunks the agent lets wait for a slow viewer before it stops reading VNC


def _key(host_name: str, session: str, what: str) -> str:
    return f"{host_key_prefix(host_name)}vnc:{session}:{what}"


def to_viewer(host_name: str, session: str) -> str:
    """RFB bytes from the VM's VNC server to the browser."""
    return _key(host_name, session, "out")


def to_server(host_name: str, session: str) -> str:
    """RFB bytes from the browser to the VM's VNC server."""
    return _key(host_name, session, "in")


def alive_key(host_name: str, session: str) -> str:
    return _key(host_name, session, "alive")


def reply_key(host_name: str, session: str) -> str:
    return _key(host_name, session, "reply")


def open_command(*, uuid: str, session: str) -> str:
    """The message for the agent's command channel (``console_streams.agent_channel``); the
    agent answers on ``reply_key``."""
    return json.dumps({"cmd": "vnc", "uuid": uuid, "session": session})


def ok_reply() -> str:
    return "ok"


def error_reply(detail: str) -> str:
    return "error:" + detail


def parse_reply(raw: bytes | str | None) -> tuple[bool, str]:
    """(opened, why not) from the agent's answer; None means the agent did not answer."""
    if raw is None:
        return False, "The host did not answer; try again in a moment."
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text == "ok":
        return True, ""
    return False, text.removeprefix("error:")
