"""Issue 3's isolation list, each looked at from inside a container and from the host."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.workers.conftest import copy_in
from workers.drivers.container.state import ContainerPaths, root_uid

pytestmark = pytest.mark.root


@pytest.fixture
def pair(ct_driver, make_spec):
    """Two running containers of different customers (no shared network group)."""
    specs = [make_spec(), make_spec()]
    for spec in specs:
        ct_driver.create(spec)
    yield specs
    for spec in specs:
        ct_driver.destroy(spec)


def _host(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout


async def test_user_ranges_are_per_container_and_disjoint(pair, ct_driver, ct_host, attach):
    ranges = []
    for spec in pair:
        pid = ct_driver.status(spec.uuid).pid
        inside, outside, count = map(int, Path(f"/proc/{pid}/uid_map").read_text().split())
        assert (inside, outside, count) == (0, root_uid(ct_host, spec.uid_slot), 65536)
        ranges.append(range(outside, outside + count))
        console = await attach(spec.uuid)
        assert (await console.run("cat /proc/self/uid_map")).split() == ["0", str(outside), "65536"]
        # the shared image is host root's, yet inside it belongs to the container's root
        assert (await console.run("stat -c '%u %g' /bin/busybox")).strip() == "0 0"
    assert not set(ranges[0]) & set(ranges[1])
    assert Path(ct_driver._image_rootfs(pair[0]), "bin/busybox").stat().st_uid == 0


async def test_pid_namespace_hides_the_host_and_other_containers(pair, ct_driver, attach):
    a, b = [await attach(spec.uuid) for spec in pair]
    await a.run("sleep 4321 & true")
    seen_by_b = await b.run("ps -o pid,args")
    assert "4321" not in seen_by_b
    pids = [int(p) for p in (await b.run("ls /proc | grep -E '^[0-9]+$'")).split()]
    assert 1 in pids and max(pids) < 100 and len(pids) < 10
    host_pid_of_a = ct_driver.status(pair[0].uuid).pid
    assert "No such process" in await b.run(f"kill -0 {host_pid_of_a} 2>&1")
    nspid = re.search(r"NSpid:\s+(\d+)\s+(\d+)", Path(f"/proc/{host_pid_of_a}/status").read_text())
    assert nspid and nspid.groups() == (str(host_pid_of_a), "1")


async def test_mounts_stay_inside_and_the_host_tree_is_unreachable(pair, ct_driver, ct_host,
                                                                 ct_root, attach):
    a, b = [await attach(spec.uuid) for spec in pair]
    assert set((await a.run("ls /")).split()) <= {
        "bin", "sbin", "usr", "etc", "root", "tmp", "var", "home", "mnt", "proc", "sys", "dev", "run"}
    mounts = await a.run("cat /proc/self/mountinfo")
    assert str(ct_root) not in mounts and "/work/main" not in mounts  # no host path shows
    assert "shared:" not in mounts and "master:" not in mounts  # no propagation either way
    # container root may not mount (no CAP_SYS_ADMIN, seccomp); a mount made in its
    # namespace from outside (as if it could) stays there
    assert "permission denied" in await a.run("mount -t tmpfs none /mnt 2>&1")
    pid = ct_driver.status(pair[0].uuid).pid
    _host("nsenter", "-t", str(pid), "-m", "mount", "-t", "tmpfs", "none", "/mnt")
    assert "/mnt" in (await a.run("cat /proc/self/mountinfo")).split()
    assert "/mnt" not in _host("cat", "/proc/self/mountinfo").split()
    assert "/mnt" not in (await b.run("cat /proc/self/mountinfo")).split()
    await a.run("rm /bin/ls")  # a whiteout in a's layer; the shared image is read-only
    assert (Path(ct_host.image_dir) / "busybox/rootfs/bin/ls").is_symlink()
    assert "/bin/ls" in await b.run("which ls")


async def test_hostname_changes_stay_inside(pair, ct_driver, attach):
    a, b = [await attach(spec.uuid) for spec in pair]
    before = socket.gethostname()
    assert (await a.run("hostname")).strip() == pair[0].hostname
    # the ordered name is the panel's: container root cannot change it (no CAP_SYS_ADMIN)...
    assert "Operation not permitted" in await a.run("hostname renamed-inside 2>&1")
    # ...and a change made in its UTS namespace from outside stays there
    pid = ct_driver.status(pair[0].uuid).pid
    _host("nsenter", "-t", str(pid), "-u", "hostname", "renamed-inside")
    assert (await a.run("hostname")).strip() == "renamed-inside"
    assert socket.gethostname() == before
    assert (await b.run("hostname")).strip() == pair[1].hostname


IPC_HELPER = r"""
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <sys/msg.h>
int main(void) {
    int id = msgget(0x4242, IPC_CREAT | 0600);
    mqd_t q = mq_open("/berth-mq", O_CREAT | O_RDWR, 0600, NULL);
    printf("msg=%d mq=%d\n", id, (int)q);
    return id < 0 || q == (mqd_t)-1;
}
"""


@pytest.fixture(scope="module")
def ipc_helper(static_program) -> Path:
    """busybox has no ipcmk: a static program that makes a SysV queue and a POSIX queue."""
    return static_program("ipc", IPC_HELPER)


async def test_ipc_objects_are_invisible_across_containers_and_from_the_host(
        pair, ct_driver, ct_host, ipc_helper, attach):
    a, b = [await attach(spec.uuid) for spec in pair]
    copy_in(ct_driver, pair[0], ipc_helper, "tmp/ipc")
    assert "msg=" in await a.run("/tmp/ipc")
    key = str(0x4242)
    assert key in (await a.run("cat /proc/sysvipc/msg")).split()
    assert "berth-mq" in await a.run("ls /dev/mqueue")
    assert key not in (await b.run("cat /proc/sysvipc/msg")).split()
    assert (await b.run("ls /dev/mqueue")).strip() == ""
    assert key not in Path("/proc/sysvipc/msg").read_text().split()


async def test_network_stack_is_its_own(pair, attach):
    console = await attach(pair[0].uuid)
    assert (await console.run("ls /sys/class/net")).split() == ["eth0", "lo"]
    assert (await console.run("ip -o link | wc -l")).strip() == "2"


async def test_cgroup_namespace_roots_at_the_container(pair, attach):
    console = await attach(pair[0].uuid)
    lines = (await console.run("cat /proc/self/cgroup")).split()
    assert lines and all(line.endswith(":/") for line in lines)


async def test_proc_and_sys_do_not_reveal_the_host(pair, attach):
    console = await attach(pair[0].uuid)
    masked = "/proc/kcore /proc/keys /proc/timer_list /proc/sched_debug"
    assert (await console.run(f"cat {masked} 2>/dev/null | wc -c")).strip() == "0"
    assert (await console.run("ls /sys/firmware | wc -l")).strip() == "0"
    assert (await console.run("ls /sys/fs/cgroup | wc -l")).strip() == "0"
    assert "Read-only file system" in await console.run("touch /sys/kernel/x 2>&1")
    assert "Read-only file system" in await console.run("echo 1 > /proc/sys/vm/drop_caches 2>&1")


def _ping_from(out: str) -> bool:
    return " 0% packet loss" in out


async def test_containers_of_different_customers_cannot_reach_each_other(ct_driver, make_spec, attach):
    alice1, alice2, bob = (make_spec(extra={"network_group": "alice"}),
                           make_spec(extra={"network_group": "alice"}), make_spec())
    specs = [alice1, alice2, bob]
    try:
        for spec in specs:
            await asyncio.to_thread(ct_driver.create, spec)
        a1, a2, b = [await attach(spec.uuid) for spec in specs]
        assert _ping_from(await a1.run(f"ping -c 1 -W 1 {alice2.network.address}"))
        assert _ping_from(await a2.run(f"ping -c 1 -W 1 {alice1.network.address}"))
        assert not _ping_from(await b.run(f"ping -c 1 -W 1 {alice1.network.address}"))
        assert not _ping_from(await a1.run(f"ping -c 1 -W 1 {bob.network.address}"))
        for spec in specs:  # the host (gateway) reaches everyone
            assert subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", spec.network.address],
                                  capture_output=True).returncode == 0
    finally:
        for spec in specs:
            await asyncio.to_thread(ct_driver.destroy, spec)


async def test_a_container_cannot_take_another_address_or_mac(pair, ct_driver, ct_host, attach):
    """Container root cannot reconfigure eth0 (no CAP_NET_ADMIN), but it can send raw frames
    (CAP_NET_RAW): the bridge must hold even against a tenant in full control of its network
    namespace, which the test plays from outside with nsenter."""
    a = await attach(pair[0].uuid)
    gateway, own = ct_host.gateway, pair[0].network.address
    victim = pair[1].network
    pid = str(ct_driver.status(pair[0].uuid).pid)

    async def as_net_admin(command: str) -> None:
        await asyncio.to_thread(_host, "nsenter", "-t", pid, "-n", *command.split())

    assert "Operation not permitted" in await a.run("ip link set eth0 address 02:de:ad:be:ef:01 2>&1")
    assert _ping_from(await a.run(f"ping -c 1 -W 1 {gateway}"))
    await as_net_admin(f"ip addr add {victim.address}/32 dev eth0")
    assert not _ping_from(await a.run(f"ping -c 1 -W 1 -I {victim.address} {gateway}"))
    # a gratuitous ARP claiming the neighbour's address must not reach the host's cache
    await a.run(f"arping -U -c 2 -I eth0 -s {victim.address} {victim.address}")
    assert pair[0].network.mac not in _host("ip", "neigh", "show", victim.address)
    await as_net_admin(f"ip addr del {victim.address}/32 dev eth0")
    await as_net_admin("ip link set eth0 address 02:de:ad:be:ef:01")
    await as_net_admin("ip neigh flush all")
    assert not _ping_from(await a.run(f"ping -c 1 -W 1 {gateway}"))
    await as_net_admin(f"ip link set eth0 address {pair[0].network.mac}")
    await as_net_admin("ip neigh flush all")
    assert _ping_from(await a.run(f"ping -c 1 -W 2 {gateway}"))
    assert own in await a.run("ip -4 addr show eth0")


def test_firewall_rules_go_with_the_container(ct_driver, make_spec):
    from workers.drivers.container import firewall
    from workers.drivers.container.state import veth_name

    spec = make_spec(extra={"network_group": "solo-group"})
    ct_driver.create(spec)
    table = _host("nft", "list", "table", "bridge", firewall.table_name(ct_driver.host))
    assert f"ct_{veth_name(spec.uuid)}" in table and firewall.group_chain("solo-group") in table
    ct_driver.destroy(spec)
    table = _host("nft", "list", "table", "bridge", firewall.table_name(ct_driver.host))
    assert veth_name(spec.uuid) not in table and firewall.group_chain("solo-group") not in table
    assert not ContainerPaths.of(ct_driver.host, spec.uuid).dir.exists()


def test_firewall_rules_are_whole_for_a_new_group_a_shared_group_and_over_leftovers(ct_driver):
    """add_port's one-transaction paths: a new group, a group with members, and the fallback
    over a chain a dead container left behind (its rules are replaced, never doubled)."""
    from workers.drivers.base import NetworkSpec
    from workers.drivers.container import firewall

    host = ct_driver.host
    net = ct_driver.host.gateway.rsplit(".", 1)[0]

    def spec(n: int) -> NetworkSpec:
        return NetworkSpec(address=f"{net}.{200 + n}", prefixlen=24, gateway=host.gateway,
                           mac=f"02:fe:00:00:00:{n:02x}", bridge=host.bridge)

    ports = ["bvtestfw0001", "bvtestfw0002"]
    try:
        firewall.add_port(host, ports[0], spec(1), "fw-test-group")
        firewall.add_port(host, ports[1], spec(2), "fw-test-group")
        firewall.add_port(host, ports[0], spec(1), "fw-test-group")  # leftovers of a dead one
        table = _host("nft", "list", "table", "bridge", firewall.table_name(host))
        for n, port in enumerate(ports, 1):
            chain = table.split(f"chain ct_{port} {{", 1)[1].split("\n\t}", 1)[0]
            assert chain.count("drop") == 6 and chain.count(spec(n).mac) == 2, chain
        group = firewall.group_chain("fw-test-group")
        assert table.count(f"chain {group} {{") == 1
        assert table.split(f"chain {group} {{", 1)[1].split("\n\t}", 1)[0].count("accept") == 1
        assert all(table.count(f'"{port}" : jump ct_{port}') == 1 for port in ports)
    finally:
        for port in ports:
            firewall.remove_port(host, port)
    table = _host("nft", "list", "table", "bridge", firewall.table_name(host))
    assert "bvtestfw" not in table and firewall.group_chain("fw-test-group") not in table


def test_removing_the_last_port_of_a_group_while_another_joins_it_keeps_the_group(ct_driver, monkeypatch):
    """remove_port decides from a listing whether the group goes with the port; a port of the
    same group added between that listing and the removal (another container's create) makes
    nftables refuse the group's deletion (EBUSY). Seen once in the soak as a failed reboot."""
    from workers.drivers.base import NetworkSpec
    from workers.drivers.container import firewall

    host = ct_driver.host
    net = host.gateway.rsplit(".", 1)[0]

    def spec(n: int) -> NetworkSpec:
        return NetworkSpec(address=f"{net}.{210 + n}", prefixlen=24, gateway=host.gateway,
                           mac=f"02:fe:00:00:01:{n:02x}", bridge=host.bridge)

    leaving, joining, group = "bvtestrace01", "bvtestrace02", "fw-race-group"
    listing = firewall._table
    joined = []

    def list_then_someone_joins(host_cfg):
        objects = listing(host_cfg)
        if not joined:  # right after remove_port's first listing
            joined.append(True)
            firewall.add_port(host, joining, spec(2), group)
        return objects

    try:
        firewall.add_port(host, leaving, spec(1), group)
        monkeypatch.setattr(firewall, "_table", list_then_someone_joins)
        firewall.remove_port(host, leaving)
        monkeypatch.setattr(firewall, "_table", listing)
        table = _host("nft", "list", "table", "bridge", firewall.table_name(host))
        assert joined and f"ct_{leaving}" not in table and f'"{leaving}"' not in table
        assert f"chain {firewall.group_chain(group)} {{" in table
        assert f'"{joining}" : jump {firewall.group_chain(group)}' in table
    finally:
        monkeypatch.setattr(firewall, "_table", listing)
        for port in (leaving, joining):
            firewall.remove_port(host, port)
    assert "bvtestrace" not in _host("nft", "list", "table", "bridge", firewall.table_name(host))
