"""The host agent's VNC relay (workers/agent.py ``VncRelay``) against a stand-in VNC server on
the loopback and real Redis: opening a session, bytes both ways in order, the ends (the
viewer's goodbye, the viewer vanishing, the server closing), and a VM that is not running.
The whole path with a real guest is tests/stack/test_vm_vnc.py."""

from __future__ import annotations

import asyncio
import os
import secrets
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from workers import vnc_streams
from workers.agent import Agent

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")


class FakeVnc:
    """Greets like an RFB server, then answers every chunk upper-cased."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        while data := await reader.read(1024):
            writer.write(data.upper())
        writer.close()
        self.closed.set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


@pytest.fixture
async def agent():
    client = aioredis.Redis.from_url(REDIS_URL)
    fake = SimpleNamespace(redis=client, host=SimpleNamespace(name=f"t{secrets.token_hex(3)}"),
                           vnc_relays={}, drivers={})
    yield fake
    for relay in list(fake.vnc_relays.values()):
        await relay.stop()
    await client.aclose()


async def open_session(agent, port: int | None) -> tuple[str, tuple[bool, str]]:
    agent.drivers["vm"] = SimpleNamespace(vnc_port=lambda _uuid: port)
    session = secrets.token_hex(16)
    await agent.redis.set(vnc_streams.alive_key(agent.host.name, session), "1", ex=30)
    await Agent._open_vnc(agent, "ab" * 16, session)
    reply = await agent.redis.blpop([vnc_streams.reply_key(agent.host.name, session)], timeout=2)
    return session, vnc_streams.parse_reply(reply[1] if reply else None)


async def pop(agent, key: str) -> bytes:
    item = await agent.redis.blpop([key], timeout=vnc_streams.BLOCK_SECONDS)
    assert item is not None, f"nothing on {key}"
    return item[1]


async def test_bytes_flow_both_ways_in_order_until_the_viewer_says_goodbye(agent):
    server = FakeVnc()
    async with server as port:
        session, (opened, why) = await open_session(agent, port)
        assert opened, why
        host = agent.host.name
        out, into = vnc_streams.to_viewer(host, session), vnc_streams.to_server(host, session)
        assert await pop(agent, out) == b"RFB 003.008\n"
        for chunk in (b"one ", b"two ", b"three"):
            await agent.redis.rpush(into, chunk)
        echoed = b""
        while len(echoed) < len(b"ONE TWO THREE"):
            echoed += await pop(agent, out)
        assert echoed == b"ONE TWO THREE"

        await agent.redis.rpush(into, vnc_streams.EOF)  # the viewer closed its WebSocket
        await asyncio.wait_for(server.closed.wait(), 5)
        assert await pop(agent, out) == vnc_streams.EOF
        await asyncio.sleep(0.1)
        assert agent.vnc_relays == {}


async def test_a_viewer_that_vanished_is_dropped(agent):
    server = FakeVnc()
    async with server as port:
        session, (opened, _) = await open_session(agent, port)
        assert opened
        await agent.redis.delete(vnc_streams.alive_key(agent.host.name, session))
        await asyncio.wait_for(server.closed.wait(), vnc_streams.BLOCK_SECONDS + 5)


async def test_the_server_closing_ends_the_viewers_stream(agent):
    server = FakeVnc()
    async with server as port:
        session, (opened, _) = await open_session(agent, port)
        assert opened
        out = vnc_streams.to_viewer(agent.host.name, session)
        assert await pop(agent, out) == b"RFB 003.008\n"
        (relay,) = agent.vnc_relays.values()
        relay.reader.feed_eof()  # what a QEMU that exited looks like from here
        assert await pop(agent, out) == vnc_streams.EOF


async def test_a_vm_that_is_not_running_has_no_screen(agent):
    _session, (opened, why) = await open_session(agent, None)
    assert not opened and why == "The VM is not running, so it has no screen."
    assert agent.vnc_relays == {}


async def test_a_malformed_session_is_refused(agent):
    agent.drivers["vm"] = SimpleNamespace(vnc_port=lambda _uuid: 5900)
    await Agent._open_vnc(agent, "ab" * 16, "../../etc")
    assert agent.vnc_relays == {}
