"""berth-shim's console: many viewers, exact resume by offset, scrollback gaps, slow or rude
clients, resize."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from workers.drivers.container.console import GAP, HELLO, OUTPUT, encode
from workers.drivers.container.state import ContainerPaths

pytestmark = pytest.mark.root
RING = 256 * 1024


async def test_two_consoles_see_the_same_output(container, attach):
    first = await attach(container.uuid)
    second = await attach(container.uuid)
    await first.session.write(b"echo from-the-first-$((6*7))\n")
    await first.expect("from-the-first-42")
    await second.expect("from-the-first-42")
    await second.session.write(b"echo from-the-second-$((6*8))\n")
    await first.expect("from-the-second-48")
    await second.expect("from-the-second-48")


async def test_reattach_from_an_offset_resumes_without_gap_or_duplicate(container, attach):
    first = await attach(container.uuid)
    await first.run("seq 1 500")
    resume_at = first.session.next_offset
    await first.close()
    other = await attach(container.uuid)
    await other.run("seq 501 1000")  # output the first viewer missed
    resumed = await attach(container.uuid, from_offset=resume_at)
    await resumed.expect("\n1000\r?\n")
    everything = await attach(container.uuid, from_offset=0)
    await everything.expect("\n1000\r?\n")
    stream = bytes(first.raw[:resume_at]) + bytes(resumed.raw)
    assert stream == bytes(everything.raw)[: len(stream)]
    assert resumed.offsets[0][0] == resume_at and not resumed.session.gaps
    assert [o for o, _ in resumed.offsets] == sorted(o for o, _ in resumed.offsets)


async def test_output_older_than_the_scrollback_is_announced_as_a_gap(container, attach):
    console = await attach(container.uuid)
    await console.run("head -c 400000 /dev/zero | tr '\\0' x; echo", timeout=20)
    late = await attach(container.uuid, from_offset=0, wide=False)  # no prompt redraw
    await late.expect("@@0@@")
    resumed = late.offsets[0][0]
    assert late.session.gaps == [(0, resumed)]
    # exactly the ring was retained (plus the prompt printed after the first reader stopped)
    assert 0 <= resumed - (console.session.next_offset - RING) < 64


async def test_a_client_that_never_reads_blocks_nobody(container, ct_host, attach):
    path = ContainerPaths.of(ct_host, container.uuid).console
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(path))
    stuck.sendall(encode(HELLO, struct.pack(">Q", 0)))
    try:
        console = await attach(container.uuid)
        await console.run("head -c 1000000 /dev/zero | tr '\\0' y; echo", timeout=20)
        # the stuck client now finds its oldest unread output overwritten: a gap, then data
        stuck.setblocking(True)
        stuck.settimeout(5)
        kinds = []
        reader = stuck.makefile("rb")
        while OUTPUT not in kinds or GAP not in kinds:
            kind, length = struct.unpack(">cI", reader.read(5))
            payload = reader.read(length)
            kinds.append(kind)
            if kind == GAP:
                (resumed,) = struct.unpack(">Q", payload)
                assert resumed > 0
        assert kinds.index(GAP) > 0  # it did get the start before falling behind
    finally:
        stuck.close()


async def test_rude_clients_are_dropped_and_the_shim_carries_on(container, ct_host, attach):
    path = str(ContainerPaths.of(ct_host, container.uuid).console)
    half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half.connect(path)
    half.sendall(b"i\x00\x00")  # half a frame header, then gone
    half.close()
    huge = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    huge.connect(path)
    huge.sendall(b"i" + struct.pack(">I", 1 << 30))  # over the frame limit: dropped
    huge.settimeout(5)
    assert huge.recv(1) == b""
    huge.close()
    console = await attach(container.uuid)
    assert (await console.run("echo still-here")).strip() == "still-here"


async def test_resize_reaches_the_terminal(container, attach):
    console = await attach(container.uuid, wide=False)
    assert (await console.run("stty size")).strip() == "24 80"  # set before the shell started
    await console.session.resize(50, 132)
    assert (await console.run("stty size")).strip() == "50 132"


async def test_many_consoles_at_once(container, attach):
    consoles = [await attach(container.uuid) for _ in range(20)]
    await consoles[0].session.write(b"echo to-all-$((2+2))\n")
    await asyncio.gather(*(c.expect("to-all-4") for c in consoles))
