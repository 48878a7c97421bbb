"""Real guests (the tiny image, under KVM or TCG as the host check decided): lifecycle, console,
events, graceful and forced stops, and that nothing is left behind."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.workers.drivers.vm_fixtures import (
    hash_password,
    libvirt_daemons,
    make_spec,
    read_until,
    virtualization,
    vm_bridge,
    vm_debian_image,
    vm_driver,
    vm_host,
    vm_tiny_image,
)
from workers.drivers.base import PowerState
from workers.drivers.vm.events import LifecycleWatcher
from workers.drivers.vm.naming import domain_name
from workers.drivers.vm.storage import InstanceFiles
from workers.images.vm_debian import DIRECTORY as VM_DEBIAN_DIRECTORY

# pytest finds these fixtures by name in this module's namespace.
_FIXTURES = (libvirt_daemons, virtualization, vm_bridge, vm_debian_image, vm_driver, vm_host, vm_tiny_image)

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 60.0


def _domain_names() -> list[str]:
    import subprocess

    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return [n for n in out.split() if n]


async def test_console_from_first_line_input_and_poweroff_event(vm_driver, vm_host):
    spec = make_spec(vm_host, root_password=hash_password("s3cret"), ssh_keys=("ssh-ed25519 AAAAtest k@t",))
    events: list[tuple[str, PowerState, str]] = []
    stopped = threading.Event()

    def on_event(uuid: str, state: PowerState, reason: str) -> None:
        if uuid == spec.uuid:
            events.append((uuid, state, reason))
            if reason.startswith("stopped:"):  # not the STOPPED of "defined: added"
                stopped.set()

    watcher = LifecycleWatcher(vm_host, on_event)
    watcher.start()
    sessions = []
    loop = asyncio.get_running_loop()

    def attach() -> None:  # runs while the domain is paused, before the first instruction
        sessions.append(asyncio.run_coroutine_threadsafe(
            vm_driver.open_console(spec.uuid), loop).result(30))

    try:
        status = await asyncio.to_thread(vm_driver.create, spec, before_resume=attach)
        assert status.state is PowerState.RUNNING and status.pid
        (session,) = sessions
        offset, first = await session.read()
        assert offset == 0  # attached before the guest ran: nothing precedes the first chunk
        out = await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT,
                               bytearray(first))
        assert f"berth: {spec.hostname} 10.253.7.10/24 via 10.253.7.1".encode() in out
        assert b"berth: root password set" in out and b"1 SSH key(s) installed" in out

        await session.write(b"echo SUM-$((40+2)); ip -4 addr show eth0; cat /etc/hostname\n")
        out = await read_until(session, b"SUM-42", 20)
        out = await read_until(session, spec.hostname.encode() + b"\r\n", 20, bytearray(out))
        assert "10.253.7.10/24" in out.decode(errors="replace")

        await session.write(b"grep -c root: /etc/shadow; cat /root/.ssh/authorized_keys\n")
        await read_until(session, b"ssh-ed25519 AAAAtest", 20)

        t0 = time.monotonic()
        await session.write(b"poweroff -f\n")
        assert await asyncio.to_thread(stopped.wait, 15), events
        took = time.monotonic() - t0
        assert took < 5, f"stopped event {took:.1f} s after poweroff"
        assert any(r.startswith("stopped: guest powered off") for _, s, r in events
                   if s is PowerState.STOPPED), events
        while (chunk := await asyncio.wait_for(session.read(), 5)) is not None:
            assert chunk[1]  # the rest of the shutdown output, then the session ends
        await session.close()
        assert vm_driver.status(spec.uuid).state is PowerState.STOPPED
    finally:
        watcher.stop()
        for s in sessions:
            await s.close()


async def test_graceful_stop_start_again_and_destroy_leaves_nothing(vm_driver, vm_host):
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await vm_driver.open_console(spec.uuid)
    await read_until(session, b"ready", BOOT_TIMEOUT)
    await session.close()
    assert [s.uuid for s in vm_driver.list_instances()] == [spec.uuid]
    assert vm_driver.vnc_port(spec.uuid) is not None

    status = await asyncio.to_thread(vm_driver.stop, spec, timeout=30)
    assert status.state is PowerState.STOPPED
    assert status.detail.startswith("guest shut down"), status.detail  # ACPI, not forced
    assert (await asyncio.to_thread(vm_driver.stop, spec)).state is PowerState.STOPPED  # again

    # Still defined: it starts again, and its console log kept the first boot.
    first_boot_end = vm_driver.console_end(spec.uuid)
    assert first_boot_end > 0
    await asyncio.to_thread(vm_driver.start, spec)
    assert vm_driver.status(spec.uuid).state is PowerState.RUNNING
    session = await vm_driver.open_console(spec.uuid, from_offset=first_boot_end)
    offset, _ = await session.read()
    assert offset == first_boot_end
    await read_until(session, b"ready", BOOT_TIMEOUT)
    await session.close()

    files = InstanceFiles.of(vm_host, spec.uuid)
    assert files.overlay.exists()
    await asyncio.to_thread(vm_driver.destroy, spec)
    await asyncio.to_thread(vm_driver.destroy, spec)  # idempotent
    assert vm_driver.status(spec.uuid).state is PowerState.ABSENT
    assert domain_name(vm_host, spec.uuid) not in _domain_names()
    assert not files.dir.exists()
    assert vm_driver.list_instances() == []


async def test_stop_forces_off_a_guest_that_ignores_acpi(vm_driver, vm_host):
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await vm_driver.open_console(spec.uuid)
    await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    await session.write(b"killall acpid; echo ACPID-GONE\n")
    await read_until(session, b"ACPID-GONE\r\n", 20)
    await session.close()
    status = await asyncio.to_thread(vm_driver.stop, spec, timeout=2)
    assert status.state is PowerState.STOPPED
    assert status.detail.startswith("forced off"), status.detail


async def test_reconnecting_relay_replays_exactly_what_it_missed(vm_driver, vm_host):
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    first = await vm_driver.open_console(spec.uuid)
    out = await read_until(first, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    resume_at = first.offset
    await first.close()  # the relay goes away...

    probe = await vm_driver.open_console(spec.uuid)
    await probe.write(b"echo MISSED-$((1+1))\n")  # ...output happens while it is gone...
    await read_until(probe, b"MISSED-2\r\n", 20)
    await probe.close()

    again = await vm_driver.open_console(spec.uuid, from_offset=resume_at)  # ...and it is back
    offset, data = await again.read()
    assert offset == resume_at
    replayed = await read_until(again, b"MISSED-2\r\n", 5, bytearray(data))
    # No gap, no duplicate at the seam: after the prompt come the shell's cursor query and the
    # command, wherever the first relay's last read happened to end (mid-query, once, on a
    # loaded machine).
    prompt = f"{spec.hostname}# ".encode()
    seam = bytes(out) + replayed
    after_prompt = seam[bytes(out).rindex(prompt) + len(prompt):]
    assert after_prompt.removeprefix(b"\x1b[6n").startswith(b"echo MISSED")
    whole = await vm_driver.open_console(spec.uuid)
    everything = await read_until(whole, b"MISSED-2\r\n", 5)
    assert everything == out + replayed
    await again.close()
    await whole.close()


async def test_reboot_and_rebuild_keep_identity(vm_driver, vm_host):
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await vm_driver.open_console(spec.uuid)
    await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    await session.write(b"echo scratch > /dev/vda; echo WROTE\n")
    await read_until(session, b"WROTE\r\n", 20)
    mark = session.offset
    status = await asyncio.to_thread(vm_driver.reboot, spec, timeout=30)
    assert status.state is PowerState.RUNNING
    assert status.detail.startswith("guest rebooted"), status.detail
    await read_until(session, b"ready", BOOT_TIMEOUT)
    assert session.offset > mark
    await session.close()

    status = await asyncio.to_thread(vm_driver.rebuild, spec)
    assert status.state is PowerState.RUNNING
    session = await vm_driver.open_console(spec.uuid, from_offset=vm_driver.console_end(spec.uuid))
    await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    await session.write(b"echo \"DISK-$(head -c 7 /dev/vda | tr -d '\\\\0')-END\"\n")
    await read_until(session, b"DISK--END", 20)  # the fresh overlay lost what the guest wrote
    await session.close()


async def test_change_plan_saved_for_next_boot_and_stats(vm_driver, vm_host):
    spec = make_spec(vm_host)
    await asyncio.to_thread(vm_driver.create, spec)
    session = await vm_driver.open_console(spec.uuid)
    await read_until(session, b"ready", BOOT_TIMEOUT)
    await session.close()
    stats = vm_driver.stats(spec.uuid)
    assert stats.cpu_seconds > 0 and stats.memory_bytes > 16 << 20

    bigger = make_spec(vm_host, uuid=spec.uuid, hostname=spec.hostname, network=spec.network,
                       vcpus=2, memory_mib=384, disk_gib=2)
    status = await asyncio.to_thread(vm_driver.change_plan, bigger)
    assert "1→2 vCPU, 256→384 MiB: takes effect at the next stop and start" in status.detail
    assert "disk grown to 2 GiB live" in status.detail
    await asyncio.to_thread(vm_driver.stop, bigger, timeout=30)
    await asyncio.to_thread(vm_driver.start, bigger)
    session = await vm_driver.open_console(spec.uuid, from_offset=vm_driver.console_end(spec.uuid))
    await read_until(session, f"{spec.hostname}# ".encode(), BOOT_TIMEOUT)
    await session.write(b"echo CPUS-$(nproc)-$(cat /sys/block/vda/size)\n")
    await read_until(session, f"CPUS-2-{2 * 2**30 // 512}".encode(), 20)
    await session.close()


def test_virtualization_verdict_has_a_reason(virtualization):
    assert virtualization.domain_type in ("kvm", "qemu")
    assert virtualization.reason.startswith("KVM" if virtualization.accelerated else "TCG")


async def test_debian_boots_to_login_with_its_password_and_shuts_down_gracefully(
        vm_driver, vm_host, vm_debian_image):
    spec = make_spec(vm_host, image="debian-12", image_path=VM_DEBIAN_DIRECTORY,
                     root_password=hash_password("pw-Berth-1"), memory_mib=512)
    await asyncio.to_thread(vm_driver.create, spec)
    for boot in (1, 2):  # the password is applied once and still works after a restart
        session = await vm_driver.open_console(
            spec.uuid, from_offset=vm_driver.console_end(spec.uuid))
        await read_until(session, f"{spec.hostname} login: ".encode(), 180)
        await session.write(b"root\n")
        await read_until(session, b"Password: ", 20)
        await session.write(b"pw-Berth-1\n")
        await read_until(session, f"root@{spec.hostname}:~# ".encode(), 30)
        await session.write(b"echo IP-$(ip -4 -br addr show eth0 | awk '{print $3}')-END\n")
        await read_until(session, b"IP-10.253.7.10/24-END", 20)
        await session.close()
        status = await asyncio.to_thread(vm_driver.stop, spec, timeout=60)
        assert status.detail.startswith("guest shut down"), (boot, status.detail)
        if boot == 1:
            await asyncio.to_thread(vm_driver.start, spec)
