"""Host networking for containers (pyroute2): the host bridge and one veth pair per container.

The container end of the pair is born inside the container's network namespace as ``eth0``
(one netlink request, no rename and no /run/netns entry), then addressed from the inside
through a netlink socket opened in that namespace with setns().
Read-only queries (existence, counters, bridge ports) use sysfs: cheap, and usable from
asyncio code where pyroute2's synchronous API refuses to run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from workers.drivers.base import DriverError, NetworkSpec
from workers.drivers.container.syscalls import CLONE_NEWNET, setns

SYS_NET = Path("/sys/class/net")
NETLINK_ROUTE = 0
LOOPBACK_INDEX = 1  # lo is the first device of every network namespace


def _fail(what: str, exc: NetlinkError) -> DriverError:
    return DriverError(f"{what}: {os.strerror(exc.code) if exc.code else exc}")


def bridge_mac(name: str) -> str:
    """A stable, locally administered MAC for the bridge.

    Without one, Linux gives a bridge the lowest MAC of its ports, so the containers' gateway
    MAC would change whenever a container starts or stops.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def link_exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(SYS_NET / bridge / "brif"))
    except FileNotFoundError:
        return []


def counters(name: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host link; (0, 0) if it is gone."""
    stats = SYS_NET / name / "statistics"
    try:
        return (int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text()))
    except (OSError, ValueError):
        return (0, 0)


def ensure_bridge(name: str, address: str, prefixlen: int) -> None:
    """Create the bridge if needed, give it its gateway address, bring it up. Idempotent."""
    try:
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=name):
                ipr.link("add", ifname=name, kind="bridge", address=bridge_mac(name))
            idx = ipr.link_lookup(ifname=name)[0]
            have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
            if (address, prefixlen) not in have:
                ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
            ipr.link("set", index=idx, state="up")
    except NetlinkError as exc:
        raise _fail(f"cannot set up bridge {name} with {address}/{prefixlen}", exc) from exc


def delete_link(name: str, timeout: float = 5.0) -> None:
    """Delete a link and wait until it is really gone (veth teardown is asynchronous)."""
    deadline = time.monotonic() + timeout
    if link_exists(name):
        try:
            with IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise _fail(f"cannot delete link {name}", exc) from exc
    while link_exists(name):
        if time.monotonic() > deadline:
            raise DriverError(f"link {name} still exists {timeout:.0f} s after deletion")
        time.sleep(0.005)


@contextlib.contextmanager
def _ipr_in_netns_of(pid: int) -> Iterator[IPRoute]:
    """IPRoute bound to the network namespace of ``pid``.

    The netlink socket is created while this thread is switched into that namespace and stays
    bound to it afterwards; pyroute2's own netns support would fork a helper process instead.
    """
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target, CLONE_NEWNET)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            finally:
                setns(own, CLONE_NEWNET)
        finally:
            os.close(target)
    finally:
        os.close(own)
    with IPRoute(use_socket=sock) as ipr:
        yield ipr


def _ifindex(name: str) -> int | None:
    try:
        return int((SYS_NET / name / "ifindex").read_text())
    except (OSError, ValueError):
        return None


def add_container_link(host_ifname: str, bridge: str, pid: int, net: NetworkSpec) -> None:
    """veth ``host_ifname`` on ``bridge``, its peer ``eth0`` in the netns of ``pid``, addressed.

    Few requests and no link dumps: this is on the path of every container start.
    """
    bridge_index = _ifindex(bridge)
    if bridge_index is None:
        raise DriverError(f"bridge {bridge} does not exist (prepare_host not run?)")
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_ifname, kind="veth", master=bridge_index, state="up",
                     peer={"ifname": "eth0", "net_ns_pid": pid, "address": net.mac})
    except NetlinkError as exc:
        raise _fail(f"cannot create veth {host_ifname} on {bridge}", exc) from exc
    try:
        with _ipr_in_netns_of(pid) as ns:
            ns.link("set", index=LOOPBACK_INDEX, state="up")
            eth0 = ns.link("get", ifname="eth0")[0]["index"]
            ns.addr("add", index=eth0, address=net.address, prefixlen=net.prefixlen)
            ns.link("set", index=eth0, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=net.gateway)
    except NetlinkError as exc:
        raise _fail(f"cannot configure eth0 ({net.address}/{net.prefixlen} via {net.gateway})",
                    exc) from exc
