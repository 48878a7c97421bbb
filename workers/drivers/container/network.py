"""Host networking for containers (pyroute2): the host bridge and one veth pair per container.

The container end of the pair is born inside the container's network namespace as ``eth0``
(one netlink request, no rename and no /run/netns entry), then addressed from the inside
through a netlink socket opened in that namespace with setns(). That path (every container
start) speaks rtnetlink directly; the host-wide and teardown operations use pyroute2.
Read-only queries (existence, counters, bridge ports) use sysfs: cheap, and usable from
asyncio code where pyroute2's synchronous API refuses to run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import time
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


def _ifindex(name: str) -> int | None:
    try:
        return int((SYS_NET / name / "ifindex").read_text())
    except (OSError, ValueError):
        return None


def add_container_link(host_ifname: str, bridge: str, pid: int, net: NetworkSpec) -> None:
    """veth ``host_ifname`` on ``bridge``, its peer ``eth0`` in the netns of ``pid``, addressed.

    On the path of every container start, so plain rtnetlink (``_Rtnl``) rather than pyroute2,
    whose message handling costs milliseconds of Python for what the kernel does in ~0.5 ms:
    one request for the pair (created up, on the bridge, the peer born in the container's
    namespace with its MAC), one lookup of eth0's index, and one batch inside the namespace
    (lo up, address, eth0 up, default route).
    """
    bridge_index = _ifindex(bridge)
    if bridge_index is None:
        raise DriverError(f"bridge {bridge} does not exist (prepare_host not run?)")
    peer = _ifinfo(0) + _attr(IFLA_IFNAME, b"eth0\0") + _attr(IFLA_NET_NS_PID, _u32(pid)) \
        + _attr(IFLA_ADDRESS, bytes.fromhex(net.mac.replace(":", "")))
    linkinfo = _attr(IFLA_INFO_KIND, b"veth\0") \
        + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    try:
        with _Rtnl() as rtnl:
            rtnl.request([(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                           _ifinfo(0, IFF_UP) + _attr(IFLA_IFNAME, host_ifname.encode() + b"\0")
                           + _attr(IFLA_MASTER, _u32(bridge_index))
                           + _attr(IFLA_LINKINFO, linkinfo))])
    except OSError as exc:
        raise DriverError(f"cannot create veth {host_ifname} on {bridge}: {exc.strerror}") from exc
    address = socket.inet_aton(net.address)
    try:
        with _Rtnl(netns_of=pid) as ns:
            eth0 = ns.link_index("eth0")
            ns.request([
                (RTM_NEWLINK, 0, _ifinfo(LOOPBACK_INDEX, IFF_UP)),
                (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                 struct.pack("=BBBBI", socket.AF_INET, net.prefixlen, 0, 0, eth0)
                 + _attr(IFA_LOCAL, address) + _attr(IFA_ADDRESS, address)),
                (RTM_NEWLINK, 0, _ifinfo(eth0, IFF_UP)),
                (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                 struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                             RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                 + _attr(RTA_GATEWAY, socket.inet_aton(net.gateway))),
            ])
    except OSError as exc:
        raise DriverError(f"cannot configure eth0 ({net.address}/{net.prefixlen} via "
                          f"{net.gateway}): {exc.strerror}") from exc


# rtnetlink, as much as add_container_link needs (linux/netlink.h, linux/rtnetlink.h,
# linux/if_link.h, linux/veth.h, linux/if_addr.h)
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_PID = 1, 3, 10, 18, 19
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
_NLMSGHDR = struct.Struct("=IHHII")


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _ifinfo(index: int, flags: int = 0) -> bytes:
    """struct ifinfomsg; ``flags`` are set (the change mask names exactly them)."""
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, flags)


class _Rtnl:
    """A NETLINK_ROUTE socket, in this network namespace or in that of ``netns_of``: created
    while this thread is switched into it (setns), it stays bound to it afterwards."""

    def __init__(self, netns_of: int | None = None) -> None:
        self.seq = 0
        if netns_of is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_ROUTE)
            return
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/proc/{netns_of}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(target, CLONE_NEWNET)
                try:
                    self.sock = socket.socket(socket.AF_NETLINK,
                                              socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
                finally:
                    setns(own, CLONE_NEWNET)
            finally:
                os.close(target)
        finally:
            os.close(own)

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, messages: list[tuple[int, int, bytes]]) -> list[bytes]:
        """Send ``(type, extra flags, payload)`` messages in one batch and wait for each one's
        answer (an ack, or the reply of a GET); OSError with the kernel's errno on a failure.
        The kernel handles a batch in order; one failing does not stop the others, so every
        answer is read before raising the first error."""
        seqs, batch = [], b""
        for kind, flags, payload in messages:
            self.seq += 1
            seqs.append(self.seq)
            batch += _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0) + payload
        self.sock.sendto(batch, (0, 0))
        replies: dict[int, bytes] = {}
        acked: set[int] = set()
        error = 0
        while len(acked) < len(seqs):
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                body = data[offset + _NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
                if seq not in seqs:
                    continue
                if kind == NLMSG_ERROR:  # the ack (error 0) or the failure
                    acked.add(seq)
                    code = -struct.unpack_from("=i", body)[0]
                    if code and not error:
                        error = code
                else:  # a GET's reply, before its ack
                    replies[seq] = body
        if error:
            raise OSError(error, os.strerror(error))
        return [replies.get(seq, b"") for seq in seqs]

    def link_index(self, name: str) -> int:
        reply, = self.request([(RTM_GETLINK, 0, _ifinfo(0) + _attr(IFLA_IFNAME, name.encode() + b"\0"))])
        if len(reply) < 16:
            raise OSError(19, f"no link {name}")  # ENODEV
        return struct.unpack_from("=i", reply, 4)[0]
