"""The host bridge's firewall (nftables, bridge family): anti-spoofing and network groups.

One table per Berth host, ``bridge berth_<host>``. Frames entering the bridge from a
container's port jump to that port's chain, which drops anything not sent from the container's
own MAC and IPv4 address (ARP included), anything that is neither IPv4 nor ARP, and attempts to
have the host route to a neighbour on the bridge. Frames forwarded between ports only pass
within a *network group*: ``spec.extra["network_group"]`` (e.g. the customer's id), by default
the container alone, so containers of different customers cannot reach each other.

    chain prerouting  (hook prerouting)  iifname vmap @spoofcheck  "bv…" : jump ct_bv…
    chain forward     (hook forward)     iifname vmap @groupof     "bv…" : jump g_<group>
    chain g_<group>                      oifname @g_<group> accept; drop

A second table, ``inet berth_<host>``, guards the host itself: traffic from the bridge to any
of the host's addresses (the gateway, but also its uplink address, which the host would accept
on any interface) is dropped, except ping to the gateway and replies to connections the host
opened; so the panel's Redis, PostgreSQL and web ports, libvirt, VNC and whatever else listens
on the host are out of the containers' reach. Forwarding from the bridge to private, shared
and link-local ranges (other hosts' bridges, VMs, a cloud metadata service) is dropped too;
anything else a host may route for its containers is its own policy. Containers have no IPv6.

nftables is driven in-process through libnftables (what the nft command is built on): a
transaction costs well under a millisecond, against 8-20 ms for running nft.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import ipaddress
import json
import re

from workers.drivers.base import DriverError, HostConfig, NetworkSpec
from workers.drivers.container.network import bridge_mac


def table_name(host: HostConfig) -> str:
    return "berth_" + re.sub(r"[^A-Za-z0-9_]", "_", host.name)


def group_chain(group: str) -> str:
    return "g_" + hashlib.sha256(group.encode()).hexdigest()[:16]


_NFT_CTX_OUTPUT_JSON = 1 << 4


@functools.cache
def libnftables() -> ctypes.CDLL:
    """The library, loaded once per process (~10 ms): the driver loads it before forking."""
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError as exc:
        raise DriverError("libnftables is missing: install Debian's nftables") from exc
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    for name in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    # the first context of a process initializes libnftables' tables: do it before any fork
    lib.nft_ctx_free(lib.nft_ctx_new(0))
    return lib


def _run(script: str, *, as_json: bool = False) -> tuple[int, str, str]:
    """Run nft commands as one transaction: (status, output, errors)."""
    lib = libnftables()
    ctx = lib.nft_ctx_new(0)
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if as_json:
            lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
        status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        errors = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        return status, output, errors
    finally:
        lib.nft_ctx_free(ctx)


def _nft(script: str, what: str) -> None:
    status, _, errors = _run(script)
    if status != 0:
        lines = [line for line in errors.splitlines() if "Error" in line]
        raise DriverError(f"{what}: {lines[0] if lines else errors.strip()}")


def _table(host: HostConfig) -> dict | None:
    """The table as nft's JSON objects, or None if it does not exist."""
    status, output, _ = _run(f"list table bridge {table_name(host)}", as_json=True)
    return json.loads(output) if status == 0 else None


def _exists(what: str) -> bool:
    """Whether an nft object exists, e.g. "chain bridge berth_x ct_bv…" (a cheap read)."""
    return _run(f"list {what}")[0] == 0


def _table_script(host: HostConfig) -> str:
    t = f"bridge {table_name(host)}"
    return f"""
add table {t}
add map {t} spoofcheck {{ type ifname : verdict; }}
add map {t} groupof {{ type ifname : verdict; }}
add chain {t} prerouting {{ type filter hook prerouting priority -200; policy accept; }}
add rule {t} prerouting iifname vmap @spoofcheck
add chain {t} forward {{ type filter hook forward priority -200; policy accept; }}
add rule {t} forward iifname vmap @groupof
"""


# never routed for a container: other tenants' networks, VMs, metadata services
PRIVATE_RANGES = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16"


def _host_guard_script(host: HostConfig) -> str:
    t, br = f"inet {table_name(host)}", f'"{host.bridge}"'
    return f"""
add table {t}
add chain {t} input {{ type filter hook input priority -10; policy accept; }}
add rule {t} input iifname {br} ct state established,related accept
add rule {t} input iifname {br} ip daddr {host.gateway} icmp type echo-request accept
add rule {t} input iifname {br} drop
add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}
add rule {t} forward iifname {br} meta nfproto ipv6 drop
add rule {t} forward iifname {br} oifname != {br} ip daddr {{ {PRIVATE_RANGES} }} drop
"""


def ensure_table(host: HostConfig) -> None:
    """Create the host's tables in one transaction unless they exist. Only additions: in
    nftables, replacing or deleting rules costs an RCU grace period (~15 ms) per commit."""
    script = ""
    if not _exists(f"table bridge {table_name(host)}"):
        script += _table_script(host)
    if not _exists(f"table inet {table_name(host)}"):
        script += _host_guard_script(host)
    if script:
        _nft(script, f"cannot set up the firewall of host {host.name}")


def delete_table(host: HostConfig) -> None:
    for family in ("bridge", "inet"):
        if _exists(f"table {family} {table_name(host)}"):
            _nft(f"delete table {family} {table_name(host)}\n",
                 f"cannot remove the firewall of host {host.name}")


def add_port(host: HostConfig, ifname: str, net: NetworkSpec, group: str) -> None:
    """Rules for the container port ``ifname`` (before the port exists: no unguarded moment).

    One transaction, without listing the bridge table, in the common cases (the table is in
    place, the port's chain is new, its group's chain new or already there): listing it costs
    more the more containers it guards (~25 ms with 100 on a loaded host; add_port took ~39 ms
    then, ~4 ms this way). A transaction that fails
    changes nothing, so anything unusual (no table, a chain left by a container that died
    unnoticed) is then looked at and set right, as before.
    """
    t, chain, g = f"bridge {table_name(host)}", f"ct_{ifname}", group_chain(group)
    subnet = ipaddress.ip_interface(f"{host.gateway}/{host.prefixlen}").network

    def port(verb: str) -> str:
        return f"""
{verb} chain {t} {chain}
add rule {t} {chain} ether saddr != {net.mac} drop
add rule {t} {chain} ether type arp arp saddr ether != {net.mac} drop
add rule {t} {chain} ether type arp arp saddr ip != {net.address} drop
add rule {t} {chain} ether type ip ip saddr != {net.address} drop
add rule {t} {chain} ether type ip ether daddr {bridge_mac(host.bridge)} ip daddr {subnet} ip daddr != {host.gateway} drop
add rule {t} {chain} ether type != {{ ip, arp }} drop
"""

    def new_group(verb: str) -> str:
        return f"""
{verb} set {t} {g} {{ type ifname; }}
{verb} chain {t} {g}
add rule {t} {g} oifname @{g} accept
add rule {t} {g} drop
"""

    elements = f"""
add element {t} {g} {{ "{ifname}" }}
add element {t} spoofcheck {{ "{ifname}" : jump {chain} }}
add element {t} groupof {{ "{ifname}" : jump {g} }}
"""
    if not _exists(f"table inet {table_name(host)}"):  # the host's guard: small, cheap to list
        ensure_table(host)
    # "create" fails on an existing chain or set, and with it the whole transaction
    if _run(port("create") + new_group("create") + elements)[0] == 0:
        return
    if _run(port("create") + elements)[0] == 0:  # a group that has members already
        return
    ensure_table(host)
    if _exists(f"chain {t} {chain}"):  # left by a container that died unnoticed
        remove_port(host, ifname)
    script = port("add")
    if not _exists(f"chain {t} {g}"):
        script += new_group("add")
    _nft(script + elements, f"cannot install the firewall rules of {ifname}")


REMOVE_ATTEMPTS = 3


def remove_port(host: HostConfig, ifname: str) -> None:
    """Remove a port's rules, and its group's chain and set once empty. Idempotent.

    Decided from a listing, so another container's port added to the same group in between
    (its own create, or start) makes the group's deletion fail: nftables refuses to delete a
    chain a map still jumps to (EBUSY), and the transaction changes nothing. It is then
    decided again from a fresh listing, where the group is in use and stays."""
    for _attempt in range(REMOVE_ATTEMPTS - 1):
        script = _removal_script(host, ifname)
        if not script or _run(script)[0] == 0:
            return
    script = _removal_script(host, ifname)
    if script:
        _nft(script, f"cannot remove the firewall rules of {ifname}")


def _removal_script(host: HostConfig, ifname: str) -> str:
    objects = _table(host)
    if objects is None:
        return ""
    t, chain = f"bridge {table_name(host)}", f"ct_{ifname}"
    maps, sets, chains = {}, {}, set()
    for obj in objects.get("nftables", []):
        if "map" in obj:
            maps[obj["map"]["name"]] = {_key(e): e for e in obj["map"].get("elem", [])}
        elif "set" in obj:
            sets[obj["set"]["name"]] = [_key(e) for e in obj["set"].get("elem", [])]
        elif "chain" in obj:
            chains.add(obj["chain"]["name"])
    lines = []
    for name in ("spoofcheck", "groupof"):
        if ifname in maps.get(name, {}):
            lines.append(f'delete element {t} {name} {{ "{ifname}" }}')
    for name, members in sets.items():
        if ifname in members:
            lines.append(f'delete element {t} {name} {{ "{ifname}" }}')
            in_use = any(_target(e) == name for k, e in maps.get("groupof", {}).items() if k != ifname)
            if members == [ifname] and not in_use:
                lines += [f"delete chain {t} {name}", f"delete set {t} {name}"]
    if chain in chains:
        lines.append(f"delete chain {t} {chain}")
    return "\n".join(lines) + "\n" if lines else ""


def port_chains(host: HostConfig) -> list[str]:
    """Names of the per-port chains in the host's table ("ct_bv…")."""
    objects = _table(host) or {}
    return [obj["chain"]["name"] for obj in objects.get("nftables", [])
            if "chain" in obj and obj["chain"]["name"].startswith("ct_")]


def _key(elem: object) -> str:
    """Element key in nft's JSON: "name", or ["name", verdict] for map entries."""
    return elem[0] if isinstance(elem, list) else str(elem)


def _target(elem: object) -> str | None:
    if isinstance(elem, list) and isinstance(elem[1], dict) and "jump" in elem[1]:
        return elem[1]["jump"]["target"]
    return None
