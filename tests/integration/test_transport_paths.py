# ruff: noqa: F811 - the fixtures imported from test_transport are used as arguments
"""The transport's NAT traversal parts on loopback, on each QUIC engine: address probes, dials
from the listening socket (punches), relayed links through a member, and their upgrade.

Loopback has no NAT: these tests check the mechanisms (what travels where, who is linked, how,
and what a relay refuses). tests/e2e/test_nat.py runs them through real NATs.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from mesh_llm.errors import PeerUnreachable, TransportError
from mesh_llm.transport._relay import FrameReader, RelayBudget
from tests.integration.test_transport import (  # noqa: F401 - fixtures
    FAST,
    NodeFactory,
    echo_handler,
    engine,
    eventually,
    make_node,
)


async def test_a_probe_reports_the_listening_socket_it_came_from(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    seen: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    a.transport.on_probe = lambda payload, address: seen.put_nowait((payload, address))
    b.transport.send_probe(a.addr(), b"nonce-1")
    payload, address = await asyncio.wait_for(seen.get(), 3)
    assert payload == b"nonce-1"
    assert address == f"127.0.0.1:{b.transport.port}"  # B's listening port, not a dialer's


async def test_a_probe_sent_to_a_peers_dialer_socket_is_dropped_there_and_the_link_goes_on(
    make_node: NodeFactory,
) -> None:
    # Nodes probe every link at its remote address; for a link the peer dialed, that is the
    # peer's own connected dialer socket, whose QUIC connection must shrug the probe off.
    a, b = await make_node(), await make_node()
    link = await b.dial(a)
    await eventually(lambda: len(a.connected) == 1)
    back = a.connected[0]
    for _ in range(5):
        a.transport.send_probe(back.remote_address, b"x" * 16)
    assert await link.ping(2) and await back.ping(2)
    assert link.is_open and back.is_open


async def test_a_punch_dial_leaves_from_the_listening_socket(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    a.transport.on_stream("echo", echo_handler)
    link = await b.transport.dial([a.addr()], a.id, punch=True)
    assert link.path == "punched" and link.is_open
    await eventually(lambda: len(a.connected) == 1)
    # A sees the connection come from B's listening port: the mapping a NAT gave that socket.
    assert a.connected[0].remote_address == f"127.0.0.1:{b.transport.port}"
    reader, writer = await link.open_stream("echo")
    payload = os.urandom(200_000)
    writer.write(payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == payload
    # B still accepts other dials on the socket it shares with its punched link.
    c = await make_node()
    assert (await c.dial(b)).is_open


async def _relayed_pair(make_node: NodeFactory) -> tuple[Any, Any, Any]:
    a, b, c = await make_node(), await make_node(), await make_node()
    await b.dial(a)
    await c.dial(a)
    await eventually(lambda: len(a.transport.links) == 2)
    return a, b, c


async def test_a_relayed_link_is_authenticated_end_to_end_and_carries_streams(make_node: NodeFactory) -> None:
    a, b, c = await _relayed_pair(make_node)
    c.transport.on_stream("echo", echo_handler)
    link = await b.transport.dial_via(a.id, c.id)
    assert link.node_id == c.id and link.relayed and link.relay == a.id
    await eventually(lambda: c.transport.link(b.id) is not None)
    back = c.transport.link(b.id)
    assert back is not None and back.relayed and back.relay == a.id
    assert b.id not in a.transport.links or a.transport.links[b.id].path == "direct"
    reader, writer = await link.open_stream("echo")
    payload = os.urandom(300_000)
    writer.write(payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 20) == payload
    assert a.transport.relays.relayed_bytes > 2 * len(payload)  # both ways, with QUIC's overhead
    link.send({"t": "over-the-relay"})
    assert await asyncio.wait_for(c.messages.get(), 3) == (b.id, {"t": "over-the-relay"})


async def test_a_relay_carries_only_ciphertext(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mesh_llm.transport import _relay

    seen: list[bytes] = []
    copy = _relay.copy_relayed

    async def recording(reader: Any, writer: Any, budget: Any, count: Any) -> None:
        class Tap:  # what the relay reads: everything it could ever learn of the stream
            async def read(self, n: int) -> bytes:
                chunk = await reader.read(n)
                seen.append(chunk)
                return chunk

        await copy(Tap(), writer, budget, count)  # type: ignore[arg-type]

    monkeypatch.setattr(_relay, "copy_relayed", recording)
    a, b, c = await _relayed_pair(make_node)
    c.transport.on_stream("echo", echo_handler)
    link = await b.transport.dial_via(a.id, c.id)
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    reader, writer = await link.open_stream("echo")
    writer.write(marker * 50)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == marker * 50
    relayed = b"".join(seen)
    assert len(relayed) > 50 * len(marker)  # the relay did carry the stream, both ways
    assert marker not in relayed and b"echo" not in relayed


async def test_a_relay_refuses_what_its_policy_refuses_and_unknown_targets(make_node: NodeFactory) -> None:
    a, b, c = await _relayed_pair(make_node)
    stranger = await make_node()
    with pytest.raises((PeerUnreachable, TransportError)):
        await b.transport.dial_via(a.id, stranger.id, timeout=2)  # A has no link to it
    a.transport.relays.policy = lambda src, dst: "relaying is off"
    with pytest.raises((PeerUnreachable, TransportError)):
        await b.transport.dial_via(a.id, c.id, timeout=2)
    assert a.transport.relays.relayed_bytes == 0
    assert c.transport.link(b.id) is None


async def test_relays_never_chain_a_member_reached_through_a_relay_cannot_ask_for_one(
    make_node: NodeFactory,
) -> None:
    a, b, c = await _relayed_pair(make_node)
    relayed = await b.transport.dial_via(a.id, c.id)
    # B asks C, which it reaches only through A, to carry its packets back to A.
    reader, _ = relayed.open_internal_stream("_relay", {"to": a.id})
    with pytest.raises(TransportError):
        await asyncio.wait_for(reader.read(), 5)
    assert c.transport.relays.relayed_bytes == 0


async def test_a_direct_link_replaces_a_relayed_one_and_its_open_streams_finish(
    make_node: NodeFactory,
) -> None:
    a, b, c = await _relayed_pair(make_node)
    c.transport.on_stream("echo", echo_handler)
    relayed = await b.transport.dial_via(a.id, c.id)
    reader, writer = await relayed.open_stream("echo")
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"

    direct = await b.dial(c)
    assert direct is not relayed and direct.path == "direct"
    assert b.transport.link(c.id) is direct
    await eventually(lambda: (c.transport.link(b.id) or relayed).path == "direct")
    # The stream opened on the relayed link goes on there until it ends.
    assert relayed.is_open
    writer.write(b"after")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"after"
    await eventually(lambda: not relayed.is_open, timeout=5)
    assert b.transport.link(c.id) is direct and direct.is_open
    assert not [peer for peer, _, _ in b.lost if peer == c.id]  # never lost in between


async def test_a_relayed_link_ends_when_its_relay_leaves(make_node: NodeFactory) -> None:
    a, b, c = await _relayed_pair(make_node)
    link = await b.transport.dial_via(a.id, c.id)
    await a.transport.close()
    await eventually(lambda: not link.is_open, timeout=10)
    await eventually(lambda: c.id in [peer for peer, _, _ in b.lost], timeout=10)


def test_relay_frames_survive_any_chunking() -> None:
    datagrams = [os.urandom(n) for n in (1, 1200, 16336, 0, 77)]
    wire = b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)
    for step in (1, 2, 3, 1000, len(wire)):
        frames = FrameReader()
        out: list[bytes] = []
        for i in range(0, len(wire), step):
            out += frames.feed(wire[i : i + step])
        assert out == datagrams


def test_the_relay_budget_delays_what_exceeds_its_rate() -> None:
    now = [0.0]
    budget = RelayBudget(1000, lambda: now[0])
    assert budget.delay_for(1000) == 0.0  # a full bucket
    assert budget.delay_for(500) == pytest.approx(0.5)
    now[0] = 10.0
    assert budget.delay_for(200) == 0.0
    assert RelayBudget(0, lambda: now[0]).delay_for(10**9) == 0.0  # no cap
