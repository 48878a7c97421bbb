"""Issue 9's container escape attempts, each made from inside a container as its root, each
refused; and what a tenant normally does still works."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from contextlib import ExitStack

import pytest

from tests.workers.conftest import copy_in
from workers.drivers.container.security import capability_mask

pytestmark = pytest.mark.root

PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void try(const char *name, long ret) {
    printf("%s=%s\n", name, ret < 0 ? strerrorname_np(errno) : "ok");
}
static void *thread(void *arg) { return arg; }

int main(void) {
    union bpf_attr attr = {0};
    struct perf_event_attr pe = {.size = sizeof(pe), .config = PERF_COUNT_SW_CPU_CLOCK,
                                 .type = PERF_TYPE_SOFTWARE};
    struct clone_args ca = {.exit_signal = SIGCHLD};
    pthread_t t;
    try("unshare_user", unshare(CLONE_NEWUSER));
    try("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr)));
    try("perf_event_open", syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0));
    try("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0));
    try("userfaultfd", syscall(SYS_userfaultfd, 0));
    try("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    try("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    try("init_module", syscall(SYS_init_module, "", 0, ""));
    try("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    try("syslog", syscall(SYS_syslog, 3 /* READ_ALL */, NULL, 0));
    try("clone3", syscall(SYS_clone3, &ca, sizeof(ca)));
    try("pthread_create", -(errno = pthread_create(&t, NULL, thread, NULL)) ? -1 : 0);
    pid_t child = fork();
    if (child == 0) _exit(7);
    int status;
    waitpid(child, &status, 0);
    try("fork", WIFEXITED(status) && WEXITSTATUS(status) == 7 ? 0 : -1);
    child = fork();
    if (child == 0) {  /* a 32-bit system call (getpid through int 0x80) */
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory");
        _exit(0);
    }
    waitpid(child, &status, 0);
    printf("int80=%s\n", WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "survived");
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(static_program):
    return static_program("probe", PROBE)


async def test_no_host_disk_to_mount_and_no_way_to_make_one(container, attach):
    console = await attach(container.uuid)
    # no block device node at all (sysfs lists the host's disks by name, as in Docker; a name
    # without a node is nothing to open)
    assert (await console.run("find / -xdev -type b 2>/dev/null | wc -l")).strip() == "0"
    assert (await console.run("ls -l /dev | grep -c '^b'")).strip() == "0"
    assert "Operation not permitted" in await console.run("mknod /tmp/vda b 253 0 2>&1")
    assert "Operation not permitted" in await console.run("mknod /tmp/sda b 8 0 2>&1")
    out = await console.run("mount /dev/vda /mnt 2>&1; mount -t ext4 /dev/loop0 /mnt 2>&1; "
                            "mount -t proc proc /mnt 2>&1")
    assert out.count("permission denied") == 3, out
    assert "/mnt" not in (await console.run("cat /proc/mounts")).split()


async def test_kernel_knobs_cannot_be_written(container, attach):
    console = await attach(container.uuid)
    host_name = socket.gethostname()
    for path in ("/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
                 "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/core_pattern"):
        out = await console.run(f"echo 1 > {path} 2>&1; echo rc=$?")
        assert "rc=1" in out and "Read-only file system" in out, (path, out)
    # read-only where the kernel has it (this one's lacks CONFIG_MAGIC_SYSRQ)
    assert "rc=1" in await console.run("echo b > /proc/sysrq-trigger; echo rc=$?")
    assert socket.gethostname() == host_name
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read().strip() != "1"


async def test_kernel_modules_cannot_be_loaded(container, attach):
    console = await attach(container.uuid)
    out = await console.run("echo junk > /tmp/evil.ko; insmod /tmp/evil.ko 2>&1; echo rc=$?")
    assert "Operation not permitted" in out and "rc=1" in out
    assert "Operation not permitted" in await console.run("rmmod loop 2>&1")


async def test_capabilities_are_the_tenant_set(container, attach):
    console = await attach(container.uuid)
    caps = dict(line.split(":\t") for line in (await console.run("grep Cap /proc/self/status")).splitlines())
    expected = f"{capability_mask():016x}"
    assert caps["CapBnd"] == caps["CapPrm"] == caps["CapEff"] == expected
    assert caps["CapInh"] == caps["CapAmb"] == "0" * 16
    assert "Seccomp:\t2" in await console.run("grep Seccomp /proc/1/status")  # 2 = filter


async def test_the_seccomp_filter_refuses_dangerous_calls(container, ct_driver, probe, attach):
    copy_in(ct_driver, container, probe, "tmp/probe")
    console = await attach(container.uuid)
    result = dict(line.split("=", 1) for line in (await console.run("/tmp/probe")).splitlines())
    for name in ("unshare_user", "bpf", "perf_event_open", "keyctl", "userfaultfd",
                 "io_uring_setup", "kexec_load", "init_module", "open_by_handle_at", "syslog"):
        assert result[name] == "EPERM", (name, result)
    assert result["clone3"] == "ENOSYS"  # so libc falls back to clone, which it inspects
    assert result["pthread_create"] == result["fork"] == "ok"
    assert result["int80"] == "Bad system call"  # 32-bit calls end the process (SIGSYS)


async def test_host_processes_stay_invisible(container, attach):
    console = await attach(container.uuid)
    pids = (await console.run("ls /proc | grep -E '^[0-9]+$'")).split()
    assert "1" in pids and len(pids) < 6
    import os
    assert "No such process" in await console.run(f"kill -0 {os.getpid()} 2>&1")


class Listeners:
    """TCP listeners on host addresses: what a panel's services would be."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.socks = []
        self.accepted: list[tuple[str, int]] = []
        for address in addresses:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(8)
            self.socks.append(sock)
            threading.Thread(target=self._accept, args=(sock, address), daemon=True).start()

    def _accept(self, sock: socket.socket, address: tuple[str, int]) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.accepted.append(address)
            conn.close()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def _uplink_address() -> str | None:
    """An address of the host outside the test bridge (the host would answer on it)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, address = line.split()[1], line.split()[3].split("/")[0]
        if not name.startswith(("bt", "bb", "virbr")):
            return address
    return None


async def test_the_host_services_are_out_of_reach(container, ct_host, attach):
    """Redis, PostgreSQL, the web server, VNC, libvirt, ssh: listening on the gateway (or on the
    host's uplink address, which the host would accept from any interface) but unreachable
    from a container; ping to the gateway still works."""
    ports = [6379, 5432, 8000, 5900, 16509, 22]
    targets = [(ct_host.gateway, port) for port in ports]
    if (uplink := _uplink_address()) is not None:
        targets.append((uplink, 48213))
    with ExitStack() as stack:
        listeners = Listeners(targets)
        stack.callback(listeners.close)
        for address in targets:  # the listeners work: from the host itself
            socket.create_connection(address, timeout=2).close()
        await asyncio.sleep(0.1)
        reached_from_host = len(listeners.accepted)
        assert reached_from_host == len(targets)
        console = await attach(container.uuid)
        for host, port in targets:
            out = await console.run(f"nc -w 1 {host} {port} </dev/null; echo rc=$?", timeout=15)
            assert "rc=1" in out, (host, port, out)
        assert len(listeners.accepted) == reached_from_host
        assert " 0% packet loss" in await console.run(f"ping -c 1 -W 2 {ct_host.gateway}")


def test_routing_to_private_ranges_is_refused(ct_driver):
    out = subprocess.run(["nft", "list", "table", "inet", f"berth_{ct_driver.host.name}"],
                         capture_output=True, text=True).stdout
    assert f'iifname "{ct_driver.host.bridge}" drop' in out
    assert "169.254.0.0/16" in out and "10.0.0.0/8" in out


async def test_normal_use_still_works(container, ct_host, attach):
    console = await attach(container.uuid)
    assert (await console.run("hostname")).strip() == container.hostname
    assert " 0% packet loss" in await console.run(f"ping -c 1 -W 2 {ct_host.gateway}")
    out = await console.run("echo 'bob:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd && "
                            "su bob -c 'id -u; sleep 0.1 & wait' && touch /tmp/f && "
                            "chown bob /tmp/f && stat -c %u /tmp/f")
    assert out.split() == ["1000", "1000"]
    assert (await console.run("sleep 30 & p=$!; kill -9 $p; wait $p; echo rc=$?")).split()[-1] == "rc=137"


async def test_debian_package_tools_work(debian, attach):
    console = await attach(debian.uuid)
    await console.expect(rf"root@{debian.hostname}:~# ", timeout=30)
    out = await console.run("apt-get install -s bash 2>&1; apt-get remove -s procps 2>&1 | tail -1",
                            timeout=30)
    assert "bash is already the newest version" in out
    assert out.strip().splitlines()[-1].startswith("Remv procps")
    assert (await console.run("dpkg -s bash | grep -c '^Status: install ok'")).strip() == "1"
