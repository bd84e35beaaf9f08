# ruff: noqa: F811 - the fixtures imported from test_transport are used as arguments
"""What one connection may make a node hold, unread or unsent, as a member could attack it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from typing import Any

from mesh_llm.errors import TransportError
from mesh_llm.peer.token import new_mesh
from mesh_llm.transport import MeshStreamReader, MeshStreamWriter
from tests.integration.test_transport import (  # noqa: F401 - fixtures
    FAST,
    NodeFactory,
    echo_handler,
    engine,
    eventually,
    make_node,
)

WINDOW = 1 << 20
BOUND = 4 << 20
CONTROL_BOUND = 256 << 10


async def _never_read(
    peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
) -> None:
    await asyncio.Event().wait()


async def test_streams_that_fill_their_windows_together_are_reset_beyond_the_connections_bound(
    make_node: NodeFactory,
) -> None:
    a = await make_node(config=dataclasses.replace(FAST, stream_window=WINDOW, max_connection_unread=BOUND))
    b = await make_node()
    a.transport.on_stream("hold", _never_read)
    a.transport.on_stream("echo", echo_handler)
    link = await b.dial(a)
    # Twelve streams, each sending its whole window to a handler that never reads: 12 MiB.
    streams = [await link.open_stream("hold") for _ in range(12)]
    for _, writer in streams:
        writer.write(b"x" * WINDOW)

    async def reset(reader: MeshStreamReader) -> None:
        try:
            await reader.read()
        except TransportError:
            return
        raise AssertionError("a held stream ended without a reset")

    waits = {asyncio.ensure_future(reset(reader)) for reader, _ in streams}
    resets = 0
    async with asyncio.timeout(30):
        while resets < 12 - BOUND // WINDOW:  # at most the bound's worth stays held
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            resets += len(done)
            for task in done:
                task.result()
    for task in waits:
        task.cancel()
    # The link goes on: pings are answered and a new stream works.
    assert link.is_open and await link.ping(2)
    reader, writer = await link.open_stream("echo")
    writer.write(b"still here")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"still here"


_FROZEN_PEER = """
import asyncio, json, sys
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import MeshCredentials
from mesh_llm.transport import MeshTransport, TransportConfig

async def main() -> None:
    mesh = MeshCredentials(bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]))
    transport = MeshTransport(
        NodeIdentity.generate(), mesh, host="127.0.0.1", config=TransportConfig(idle_timeout=60.0)
    )
    await transport.start()
    print(json.dumps({"id": transport.node_id, "port": transport.port}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_peer_that_stops_taking_control_messages_loses_its_link_at_the_bound(
    make_node: NodeFactory,
) -> None:
    mesh = new_mesh()
    config = dataclasses.replace(
        FAST, idle_timeout=60.0, max_frame=64 << 10, max_control_backlog=CONTROL_BOUND
    )  # the idle timeout cannot be what ends the link within the test's wait
    a = await make_node(credentials=mesh, config=config)
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FROZEN_PEER, mesh.mesh_id.hex(), mesh.secret.hex(),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert peer.stdout is not None
        hello = json.loads(await asyncio.wait_for(peer.stdout.readline(), 30))
        link = await a.transport.dial([f"127.0.0.1:{hello['port']}"], hello["id"])
        message = {"t": "bulk", "pad": "x" * (8 << 10)}
        # A peer that takes what it is sent keeps its link, whatever the volume: 1 MiB, in steps
        # of 64 KiB that it has taken (the pong comes after them on the control stream) before
        # the next, however slowly a loaded machine runs it.
        for _ in range(4 * CONTROL_BOUND // (64 << 10)):
            for _ in range(8):
                link.send(message)
            assert await link.ping(30)
        assert link.is_open
        # Frozen, it takes nothing more: the link closes once the untaken bytes pass the bound
        # (beyond what the congestion window lets fly unacknowledged, which qh3 does not count).
        os.kill(peer.pid, signal.SIGSTOP)
        with contextlib.suppress(TransportError):
            for _ in range((16 << 20) // (8 << 10)):
                link.send(message)
                await asyncio.sleep(0.001)
        await eventually(lambda: not link.is_open, timeout=10)
        assert any("untaken" in reason for _, reason, _ in a.lost), a.lost
    finally:
        os.kill(peer.pid, signal.SIGCONT)
        peer.kill()
        await asyncio.wait_for(peer.wait(), 10)
