# ruff: noqa: F811 - the fixtures imported from test_transport are used as arguments
"""What one connection's streams may make a node hold unread, as a member could attack it."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from mesh_llm.errors import TransportError
from mesh_llm.transport import MeshStreamReader, MeshStreamWriter
from tests.integration.test_transport import (  # noqa: F401 - fixtures
    FAST,
    NodeFactory,
    echo_handler,
    engine,
    make_node,
)

WINDOW = 1 << 20
BOUND = 4 << 20


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
