"""A Debian 12 container: sysvinit as PID 1, a login shell on the console, clean shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from workers.drivers.base import PowerState

pytestmark = pytest.mark.root


async def test_debian_boots_a_real_init_and_a_login_shell(debian, attach):
    console = await attach(debian.uuid)
    await console.expect(rf"root@{debian.hostname}:~# ", timeout=30)
    assert (await console.run("cat /proc/1/comm")).strip() == "init"
    assert (await console.run("cat /etc/debian_version")).startswith("12.")
    assert (await console.run("runlevel")).split() == ["N", "2"]
    assert (await console.run("tty")).strip() == "/dev/console"
    assert (await console.run("case $- in *m*) echo job-control;; esac")).strip() == "job-control"
    assert (await console.run("ps -o comm= -p $PPID")).strip() == "login"
    assert f"inet {debian.network.address}/" in await console.run("ip -4 addr show eth0")


async def test_debian_shuts_down_cleanly_on_stop(debian, ct_driver, attach):
    console = await attach(debian.uuid)
    # after the prompt: login's vhangup() would cut off output written while it runs
    await console.expect(rf"root@{debian.hostname}:~# ", timeout=30)
    started = time.perf_counter()
    status = await asyncio.to_thread(ct_driver.stop, debian, timeout=20)
    elapsed = time.perf_counter() - started
    assert (status.state, status.detail) == (PowerState.STOPPED, "powered off")
    assert elapsed < 10
    with pytest.raises(AssertionError):
        await console.expect("never printed", timeout=2)
    # init went through runlevel 0 (the scripts' own lines may stay in startpar's buffer
    # when halt ends everything, so they are not asserted)
    assert "concurrent boot in runlevel 0" in console.text


async def test_the_console_outlives_a_logout(debian, attach):
    """exit → login ends, agetty respawns (its vhangup() hangs up every open console fd,
    the shim's own included) → a new automatic login on the same console."""
    console = await attach(debian.uuid)
    await console.expect(rf"root@{debian.hostname}:~# ", timeout=30)
    await console.session.write(b"exit\n")
    await console.expect(r"(?s)exit.*login: root \(automatic login\).*root@.*:~# ", timeout=30)
    assert (await console.run("echo still-$((40+2))")).strip() == "still-42"


async def test_poweroff_from_inside_stops_the_container(debian, ct_driver, attach):
    console = await attach(debian.uuid)
    await console.expect(rf"root@{debian.hostname}:~# ", timeout=30)
    await console.session.write(b"poweroff\n")
    deadline = time.monotonic() + 15
    while ct_driver.status(debian.uuid).state != PowerState.STOPPED and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert ct_driver.status(debian.uuid).detail == "powered off"
