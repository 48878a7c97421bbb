"""Debian's Chromium for the browser tests, deaf to the host's network changes.

Chromium watches the host's addresses over a NETLINK_ROUTE socket and, when they change,
aborts every request in flight with ``net::ERR_NETWORK_CHANGED``. The stack tests change them
all the time: each container and VM adds a veth or tap device to a bridge, and other test
runs on the machine add and remove bridges. A page whose ~40 noVNC modules were loading when
that happened never ran its screen script; a form posted at that moment never arrived.

A tiny ``LD_PRELOAD`` shim refuses NETLINK_ROUTE sockets, so Chromium takes its "cannot
watch, assume the network never changes" path (the workaround of
https://issues.chromium.org/issues/41465264). Without a C compiler the browser starts as
before. Nothing in the pages changes: only how the test browser treats the test machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/netlink.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (domain == AF_NETLINK && protocol == NETLINK_ROUTE) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    return real(domain, type, protocol);
}
"""


def no_netlink_shim() -> str | None:
    """The shim's path (built once per source version), or None when it cannot be built."""
    digest = hashlib.sha256(SHIM.encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"berth-no-netlink-{digest}.so"
    if target.exists():
        return str(target)
    source = target.with_suffix(".c")
    source.write_text(SHIM)
    partial = target.with_suffix(f".{os.getpid()}.so")
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), "-ldl"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    partial.replace(target)  # atomic: parallel runs never load a half-written file
    return str(target)


def launch(playwright, args: list[str] | None = None):
    """Chromium through Playwright, with the shim when it could be built."""
    env = dict(os.environ)
    shim = no_netlink_shim()
    if shim:
        env["LD_PRELOAD"] = " ".join(filter(None, [shim, env.get("LD_PRELOAD", "")]))
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args or ARGS, env=env)
