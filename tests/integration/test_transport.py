"""The QUIC layer on loopback, on each QUIC engine: authentication, links, streams, tunnels.

Every test runs once per engine (qh3, aioquic), and nodes on different engines interoperate.
Every transport binds port 0; peers that must die like a real process run in a subprocess
that is killed with SIGKILL. Raw, unauthenticated clients speak plain qh3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import socket
import ssl
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from qh3.asyncio import connect
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.tls import SignatureAlgorithm

from mesh_llm.errors import AuthenticationError, ConfigError, MalformedFrame, PeerUnreachable, TransportError
from mesh_llm.mesh.tunnel import open_tcp_tunnel, serve_tcp_streams
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import MeshCredentials, new_mesh
from mesh_llm.peer.wire import encode_frame
from mesh_llm.transport import (
    ALPN,
    ENGINES,
    CloseCode,
    MeshStreamReader,
    MeshStreamWriter,
    MeshTransport,
    PeerLink,
    TransportConfig,
)
from mesh_llm.transport._state import State, can_move

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = TransportConfig(
    handshake_timeout=2.0,
    auth_timeout=2.0,
    dial_timeout=3.0,
    idle_timeout=2.0,
    keepalive_interval=0.25,
    liveness_probe_timeout=0.5,
    close_timeout=0.3,
)


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class Node:
    """A started transport plus everything its callbacks reported."""

    def __init__(self, transport: MeshTransport) -> None:
        self.transport = transport
        self.messages: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.connected: list[PeerLink] = []
        self.lost: list[tuple[str, str, float]] = []
        transport.on_message = lambda peer, msg: self.messages.put_nowait((peer, msg))
        transport.on_peer_connected = self.connected.append
        transport.on_peer_lost = lambda peer, reason: self.lost.append((peer, reason, time.monotonic()))

    @property
    def id(self) -> str:
        return self.transport.node_id

    def addr(self, host: str = "127.0.0.1") -> str:
        return f"[{host}]:{self.transport.port}" if ":" in host else f"{host}:{self.transport.port}"

    async def dial(self, other: Node, host: str = "127.0.0.1", **kwargs: Any) -> PeerLink:
        return await self.transport.dial([other.addr(host)], other.id, **kwargs)


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_node(engine: str) -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []

    async def factory(
        credentials: MeshCredentials | None = None,
        identity: NodeIdentity | None = None,
        config: TransportConfig = FAST,
        host: str = "::",
        quic_engine: str | None = None,
    ) -> Node:
        config = dataclasses.replace(config, quic_engine=quic_engine or engine)
        transport = MeshTransport(
            identity or NodeIdentity.generate(), credentials or shared_mesh, host=host, config=config
        )
        await transport.start()
        node = Node(transport)
        nodes.append(node)
        return node

    shared_mesh = new_mesh()
    yield factory
    for node in nodes:
        await node.transport.close()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def echo_handler(
    peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


# --- links and messages -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_two_nodes_authenticate_and_exchange_messages(make_node: NodeFactory, host: str) -> None:
    if host == "::1" and not _ipv6_available():
        pytest.fail("IPv6 loopback is not available on this machine")
    a, b = await make_node(), await make_node()
    link = await a.dial(b, host)
    assert link.node_id == b.id and link.initiated_locally and link.is_open
    await eventually(lambda: len(b.connected) == 1)
    back = b.connected[0]
    assert back.node_id == a.id and not back.initiated_locally
    assert [x.node_id for x in a.connected] == [b.id]

    link.send({"t": "hello", "n": 1})
    assert await asyncio.wait_for(b.messages.get(), 2) == (a.id, {"t": "hello", "n": 1})
    back.send({"t": "welcome", "peers": []})
    assert await asyncio.wait_for(a.messages.get(), 2) == (b.id, {"t": "welcome", "peers": []})
    await eventually(lambda: link.rtt_ms is not None)  # measured by the first ping, size load-dependent
    assert link.rtt_ms is not None and link.rtt_ms > 0


async def test_every_connection_state_change_is_logged_once_in_order(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mesh_llm.transport")
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    await eventually(lambda: len(b.connected) == 1)
    link.close("done")
    await eventually(lambda: not b.transport.links)
    moves = [
        (r.args[1], r.args[2])
        for r in caplog.records
        if r.name == "mesh_llm.transport" and r.msg.startswith("connection %s: %s -> %s")
    ]
    for old, new in moves:
        assert can_move(State(old), State(new)), (old, new)
    # The dialer's and the listener's connection, each through every state once.
    assert Counter(moves) == {
        ("handshaking", "authenticating"): 2,
        ("authenticating", "ready"): 2,
        ("ready", "closed"): 2,
    }


async def test_nodes_on_different_quic_engines_interoperate(make_node: NodeFactory, engine: str) -> None:
    other = next(name for name in ENGINES if name != engine)
    a, b = await make_node(), await make_node(quic_engine=other)
    assert a.transport.engine.split()[0] == engine and b.transport.engine.split()[0] == other
    b.transport.on_stream("echo", echo_handler)
    a.transport.on_stream("echo", echo_handler)
    link = await a.dial(b)  # a's engine dials, b's listens
    payload = os.urandom(300_000)
    reader, writer = await link.open_stream("echo")
    writer.write(payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == payload
    link.close("turn around")
    await eventually(lambda: a.id not in b.transport.links)
    back = await b.dial(a)  # and the other way round
    reader, writer = await back.open_stream("echo")
    writer.write(payload)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == payload
    back.send({"t": "hello"})
    assert await asyncio.wait_for(a.messages.get(), 2) == (b.id, {"t": "hello"})


async def test_messages_arrive_in_order(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    for i in range(500):
        link.send({"t": "seq", "i": i})
    received = [await asyncio.wait_for(b.messages.get(), 2) for _ in range(500)]
    assert [msg["i"] for _, msg in received] == list(range(500))


async def test_reserved_and_unencodable_messages_are_refused(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    with pytest.raises(MalformedFrame):
        link.send({"t": "_credit", "s": 0, "o": 1 << 40})
    with pytest.raises(MalformedFrame):
        link.send({"no": "type"})


async def test_dialing_a_connected_peer_returns_the_existing_link(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    await eventually(lambda: len(b.connected) == 1)
    assert await a.dial(b) is link
    # The other direction reuses the same connection too.
    reverse = await b.dial(a)
    assert reverse is b.connected[0] and not reverse.initiated_locally
    # A dial without an expected id learns the id from the peer and still reuses the link.
    assert await a.transport.dial([b.addr()]) is link
    await asyncio.sleep(0.2)
    assert len(a.connected) == 1 and len(b.connected) == 1
    assert a.lost == [] and b.lost == []


async def test_concurrent_dials_to_one_peer_share_one_connection(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    links = await asyncio.gather(*(a.dial(b) for _ in range(5)))
    assert all(link is links[0] for link in links)
    await asyncio.sleep(0.2)
    assert len(a.connected) == 1 and len(b.connected) == 1


async def test_simultaneous_dial_yields_one_link(make_node: NodeFactory) -> None:
    for _ in range(5):
        a, b = await make_node(), await make_node()
        link_a, link_b = await asyncio.gather(a.dial(b), b.dial(a))
        await asyncio.sleep(0.3)
        # Both sides hold the two ends of one connection: the one the lower node id dialed.
        assert a.transport.links == {b.id: link_a} and b.transport.links == {a.id: link_b}
        assert link_a.is_open and link_b.is_open
        assert link_a.initiated_locally != link_b.initiated_locally
        winner = link_a if link_a.initiated_locally else link_b
        assert winner is (link_a if a.id < b.id else link_b)
        assert a.connected == [link_a] and b.connected == [link_b]
        assert a.lost == [] and b.lost == []
        link_a.send({"t": "ping"})
        assert (await asyncio.wait_for(b.messages.get(), 2))[0] == a.id


async def test_dialing_several_addresses_takes_the_one_that_answers(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    link = await a.transport.dial([f"127.0.0.1:{dead_port}", "not an address", b.addr()], b.id)
    assert link.node_id == b.id


async def test_unreachable_peer_fails_with_peer_unreachable_before_the_deadline(
    make_node: NodeFactory,
) -> None:
    a = await make_node()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound but never answers
    silent.bind(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        with pytest.raises(PeerUnreachable):
            await a.transport.dial([f"127.0.0.1:{silent.getsockname()[1]}"], "ab" * 32, timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        silent.close()
    with pytest.raises(PeerUnreachable):
        await a.transport.dial(["nonsense"], timeout=0.5)
    with pytest.raises(ConfigError):
        await a.transport.dial(["127.0.0.1:1"], a.id)


# --- authentication failures ------------------------------------------------------------------


async def test_wrong_secret_is_refused_and_learns_nothing(make_node: NodeFactory) -> None:
    b = await make_node()
    handled: list[str] = []

    async def record(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        handled.append(peer)

    b.transport.on_stream("echo", record)
    b.transport.on_peer_connected = lambda link: link.send({"t": "peer-list", "peers": ["secret"]})
    real = b.transport.credentials
    intruder = await make_node(MeshCredentials(real.mesh_id, os.urandom(32)))
    with pytest.raises(AuthenticationError, match="secret"):
        await intruder.dial(b)
    await asyncio.sleep(0.2)
    assert intruder.transport.links == {} and intruder.connected == []
    assert intruder.messages.empty() and handled == []
    assert b.transport.links == {} and b.lost == []
    # The listener still serves honest peers.
    honest = await make_node(real)
    assert (await honest.dial(b)).node_id == b.id


async def test_wrong_mesh_id_is_refused(make_node: NodeFactory) -> None:
    b = await make_node()
    real = b.transport.credentials
    stranger = await make_node(MeshCredentials(os.urandom(16), real.secret))
    with pytest.raises(AuthenticationError, match="different mesh"):
        await stranger.dial(b)
    assert b.transport.links == {} and stranger.transport.links == {}


async def test_reaching_the_wrong_node_id_is_refused(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    someone_else = NodeIdentity.generate().node_id
    with pytest.raises(AuthenticationError, match="not the expected"):
        await a.transport.dial([b.addr()], someone_else)
    await asyncio.sleep(0.1)
    assert a.transport.links == {} and b.transport.links == {}
    assert b.connected == []


def _raw_client_configuration() -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    configuration.signature_algorithms = [SignatureAlgorithm.ED25519]  # node certificates are ed25519
    return configuration


class _RecordingProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: dict[int, bytes] = {}
        self.resets: list[int] = []
        self.terminated: events.ConnectionTerminated | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self.received[event.stream_id] = self.received.get(event.stream_id, b"") + event.data
        elif isinstance(event, events.StreamReset):
            self.resets.append(event.stream_id)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event


async def test_unauthenticated_peer_cannot_open_streams_and_times_out(make_node: NodeFactory) -> None:
    b = await make_node(
        config=TransportConfig(
            auth_timeout=0.5, liveness_probe_timeout=0.2, idle_timeout=2.0, keepalive_interval=0.25
        )
    )
    handled: list[str] = []

    async def record(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        handled.append(peer)

    b.transport.on_stream("echo", record)
    configuration = _raw_client_configuration()
    async with connect(
        "127.0.0.1", b.transport.port, configuration=configuration, create_protocol=_RecordingProtocol
    ) as client:
        assert isinstance(client, _RecordingProtocol)
        quic = client._quic
        # Skip authentication: straight to a data stream of a registered kind.
        quic.send_stream_data(4, encode_frame({"t": "_open", "kind": "echo", "header": {}}) + b"payload")
        client.transmit()
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.terminated is not None
        assert client.terminated.error_code == CloseCode.AUTH_TIMEOUT
        assert 4 in client.resets and 4 not in client.received
    assert handled == [] and b.transport.links == {} and b.connected == []


async def test_garbage_on_the_control_stream_closes_the_connection(make_node: NodeFactory) -> None:
    b = await make_node()
    configuration = _raw_client_configuration()
    async with connect(
        "127.0.0.1", b.transport.port, configuration=configuration, create_protocol=_RecordingProtocol
    ) as client:
        assert isinstance(client, _RecordingProtocol)
        client._quic.send_stream_data(0, b"\x00\x00\x00\x05hello")
        client.transmit()
        await asyncio.wait_for(client.wait_closed(), 3)
        assert client.terminated is not None and client.terminated.error_code == CloseCode.PROTOCOL_ERROR
        assert 0 not in client.received, "nothing was said before the bad frame was rejected"


# --- streams ----------------------------------------------------------------------------------


async def test_five_megabytes_each_way_arrive_intact(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    upload, download = os.urandom(5_000_000), os.urandom(5_000_000)
    received_by_b: list[bytes] = []

    async def exchange(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        assert header == {"size": len(upload)}

        async def send() -> None:
            for i in range(0, len(download), 100_000):
                writer.write(download[i : i + 100_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received_by_b.append(await reader.read())
        await sender

    b.transport.on_stream("exchange", exchange)
    link = await a.dial(b)
    reader, writer = await link.open_stream("exchange", {"size": len(upload)})

    async def send() -> None:
        for i in range(0, len(upload), 100_000):
            writer.write(upload[i : i + 100_000])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    downloaded = await asyncio.wait_for(reader.read(), 60)
    await sender
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(download).digest()
    await eventually(lambda: bool(received_by_b))
    assert hashlib.sha256(received_by_b[0]).digest() == hashlib.sha256(upload).digest()
    assert reader.at_eof() and writer.bytes_written == len(upload)


async def test_slow_reader_stalls_the_writer_instead_of_buffering(make_node: NodeFactory) -> None:
    window = 64 * 1024
    config = TransportConfig(stream_window=window, idle_timeout=2.0, keepalive_interval=0.25)
    a, b = await make_node(config=config), await make_node(config=config)
    may_read = asyncio.Event()
    total = 1_000_000

    async def slow(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        await may_read.wait()
        writer.write(str(len(await reader.read())).encode())

    b.transport.on_stream("slow", slow)
    link = await a.dial(b)
    reader, writer = await link.open_stream("slow")
    chunk = b"x" * 8192

    async def produce() -> None:
        while writer.bytes_written < total:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.5)
    assert not producer.done()
    assert writer.bytes_written <= window + len(chunk), "the writer got ahead of the reader's credit"
    may_read.set()
    await asyncio.wait_for(producer, 10)
    assert await asyncio.wait_for(reader.read(), 10) == str(writer.bytes_written).encode()


async def test_half_close_works_in_both_directions(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()

    async def respond(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        request = await reader.read()  # until the opener's EOF
        assert reader.at_eof()
        writer.write(b"response to " + request)
        writer.write_eof()

    b.transport.on_stream("rpc", respond)
    link = await a.dial(b)
    reader, writer = await link.open_stream("rpc")
    writer.write(b"request")
    writer.write_eof()
    with pytest.raises(TransportError):
        writer.write(b"more")
    assert await asyncio.wait_for(reader.read(), 2) == b"response to request"
    assert reader.at_eof()
    assert await reader.read() == b""


async def test_server_can_open_streams_to_the_dialer(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    a.transport.on_stream("echo", echo_handler)
    await a.dial(b)
    await eventually(lambda: len(b.connected) == 1)
    reader, writer = await b.connected[0].open_stream("echo", {"x": 1})
    writer.write(b"ping")
    writer.write_eof()
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    assert await reader.read() == b""


async def test_stream_of_an_unregistered_kind_is_reset(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    reader, writer = await link.open_stream("no-such-kind", {})
    writer.write(b"hello")
    with pytest.raises(TransportError, match="unknown kind"):
        await asyncio.wait_for(reader.read(), 2)
    await eventually(writer.is_closing)  # the peer also stopped our sending side
    with pytest.raises(TransportError, match="stopped reading"):
        writer.write(b"more")
    assert link.is_open, "a refused stream does not hurt the link"


async def test_failing_handler_resets_its_stream(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()

    async def broken(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        raise RuntimeError("bug")

    b.transport.on_stream("broken", broken)
    link = await a.dial(b)
    reader, _ = await link.open_stream("broken")
    with pytest.raises(TransportError, match="handler failed"):
        await asyncio.wait_for(reader.read(), 2)


async def test_many_concurrent_streams(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    b.transport.on_stream("echo", echo_handler)
    link = await a.dial(b)

    async def one(i: int) -> bytes:
        reader, writer = await link.open_stream("echo")
        writer.write(f"stream {i}".encode() * 100)
        writer.write_eof()
        return await reader.read()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 10)
    assert results == [f"stream {i}".encode() * 100 for i in range(50)]


async def test_half_open_streams_hold_bounded_memory_for_a_bounded_time(make_node: NodeFactory) -> None:
    # The attack: a member opens many streams, each with the start of a near-1 MiB open frame
    # that never completes. The node holds a few of them, in bytes and in time, and refuses the
    # rest; its link and its honest streams go on.
    config = dataclasses.replace(FAST, stream_open_timeout=1.0)
    a, b = await make_node(config=config), await make_node(config=config)
    b.transport.on_stream("echo", echo_handler)
    link = await a.dial(b)
    attacker = link._conn
    quic = attacker._quic
    start = struct.pack(">I", config.max_frame - 16)  # a frame length, then too few of its bytes
    for _ in range(60):
        quic.send_stream_data(quic.get_next_available_stream_id(), start + b"x" * 200_000)
    attacker.transmit()
    victim = b.transport.link(a.id)._conn._streams
    await eventually(lambda: victim._highest_remote_stream >= 4 * 59, 10)
    held = sum(len(buffer) for buffer in victim._opening.values())
    assert len(victim._opening) <= config.max_opening_streams
    assert held <= config.max_opening_bytes, f"{held} bytes held for half-open streams"
    await eventually(lambda: not victim._opening, 3)  # and only until their deadline
    reader, writer = await link.open_stream("echo")
    writer.write(b"still here")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 3) == b"still here"


async def test_a_peer_cannot_keep_more_streams_open_than_its_bound(make_node: NodeFactory) -> None:
    config = dataclasses.replace(FAST, max_remote_streams=4)
    a, b = await make_node(config=config), await make_node(config=config)
    parked = asyncio.Event()

    async def park(
        peer: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        await parked.wait()

    b.transport.on_stream("park", park)
    link = await a.dial(b)
    opened = [await link.open_stream("park") for _ in range(6)]
    for _, writer in opened:
        writer.write(b"x")
    reader, _ = opened[-1]
    with pytest.raises(TransportError):
        await asyncio.wait_for(reader.read(), 3)  # refused: four are open already
    assert b.transport.link(a.id)._conn._streams.counts[2] == 4
    parked.set()
    assert link.is_open


# --- losing peers -----------------------------------------------------------------------------


async def test_peer_closing_fires_on_peer_lost(make_node: NodeFactory) -> None:
    a, b, c = await make_node(), await make_node(), await make_node()
    link = await a.dial(b)
    await a.dial(c)
    await eventually(lambda: len(c.connected) == 1)
    reader, _ = await link.open_stream("whatever")
    started = time.monotonic()
    await b.transport.close()
    await eventually(lambda: len(a.lost) == 1, timeout=2)
    peer, reason, at = a.lost[0]
    assert peer == b.id and "shutting down" in reason and at - started < 2
    assert not link.is_open and b.id not in a.transport.links
    with pytest.raises(TransportError):
        link.send({"t": "anyone?"})
    with pytest.raises(TransportError):
        await reader.read()
    # A link closed locally is reported on both sides.
    a.transport.links[c.id].close("bye")
    await eventually(lambda: len(c.lost) == 1, timeout=2)
    assert c.lost[0][0] == a.id and "bye" in c.lost[0][1]
    assert [peer for peer, _, _ in a.lost] == [b.id, c.id]


_PEER_SCRIPT = """
import asyncio, sys
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import MeshCredentials
from mesh_llm.transport import MeshTransport, TransportConfig

async def main():
    key, mesh_id, secret, address, node_id, engine = sys.argv[1:7]
    config = TransportConfig(idle_timeout=2.0, keepalive_interval=0.25, quic_engine=engine)
    credentials = MeshCredentials(bytes.fromhex(mesh_id), bytes.fromhex(secret))
    transport = MeshTransport(NodeIdentity.load_or_create(key), credentials, host="127.0.0.1", config=config)
    await transport.start()
    await transport.dial([address], node_id, timeout=5)
    print("linked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def _spawn_peer(key: Path, node: Node) -> asyncio.subprocess.Process:
    credentials = node.transport.credentials
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PEER_SCRIPT,
        str(key),
        credentials.mesh_id.hex(),
        credentials.secret.hex(),
        node.addr(),
        node.id,
        node.transport.engine.split()[0],
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 15)
    assert line.strip() == b"linked"
    return process


async def test_killed_peer_is_lost_within_the_idle_timeout_and_can_come_back(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    a = await make_node()
    key = tmp_path / "peer.key"
    peer_id = NodeIdentity.load_or_create(key).node_id
    process = await _spawn_peer(key, a)
    try:
        await eventually(lambda: len(a.connected) == 1)
        stale = a.connected[0]
        assert stale.node_id == peer_id
        process.kill()  # SIGKILL: no goodbye, no CONNECTION_CLOSE
        await process.wait()
        killed_at = time.monotonic()
        await eventually(lambda: len(a.lost) == 1, timeout=FAST.idle_timeout + 2)
        assert a.lost[0][0] == peer_id
        assert a.lost[0][2] - killed_at < FAST.idle_timeout + 1.5
        assert "idle timeout" in a.lost[0][1]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    # Restarted with the same key, it dials again and gets a fresh link at once.
    process = await _spawn_peer(key, a)
    try:
        await eventually(lambda: len(a.connected) == 2)
        assert a.connected[1].node_id == peer_id and a.connected[1].is_open and not stale.is_open
    finally:
        process.kill()
        await process.wait()


async def test_restarted_peer_replaces_its_stale_link_before_the_idle_timeout(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    a = await make_node(config=TransportConfig(idle_timeout=30.0, keepalive_interval=0.25))
    key = tmp_path / "peer.key"
    process = await _spawn_peer(key, a)
    try:
        await eventually(lambda: len(a.connected) == 1)
        process.kill()
        await process.wait()
        process = await _spawn_peer(key, a)
        await eventually(lambda: len(a.connected) == 2, timeout=2)
        fresh = a.connected[1]
        assert a.transport.links == {fresh.node_id: fresh} and not a.connected[0].is_open
        assert a.lost == [], "a replaced link is not reported lost"
    finally:
        process.kill()
        await process.wait()


async def test_rtt_is_measured_by_pings_with_a_windowed_minimum(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    link = await a.dial(b)
    await eventually(lambda: link.rtt_ms is not None)
    assert await link.ping(1.0) and await link.ping(1.0)
    smoothed, minimum = link.rtt_ms, link.rtt_min_ms
    assert smoothed is not None and minimum is not None and 0 < minimum <= smoothed * 8


async def test_close_leaves_no_tasks_behind(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    b.transport.on_stream("echo", echo_handler)
    link = await a.dial(b)
    reader, writer = await link.open_stream("echo")
    writer.write(b"x")
    await reader.readexactly(1)
    await a.transport.close()
    await b.transport.close()
    await asyncio.sleep(0.05)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leftovers == []
    with pytest.raises(TransportError):
        await a.transport.dial([b.addr()])


# --- tunnels ----------------------------------------------------------------------------------


async def _http_server(body: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1]
        payload = body + b" for " + path
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tunnel_carries_an_http_request_and_counts_bytes(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()
    server, http_port = await _http_server(b"hello from the model server")
    service = serve_tcp_streams(
        b.transport, "http", lambda peer, header: http_port if header["model"] == "m" else None
    )
    link = await a.dial(b)
    tunnel = await open_tcp_tunnel(link, "http", {"model": "m"})
    try:
        request = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
        writer.write(request)
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(
            b"hello from the model server for /v1/models"
        )
        await eventually(lambda: tunnel.counters.active == 0 and service.active == 0)
        # Each side counts from its own point of view: the request goes to the peer from the
        # tunnel and comes from the peer at the service.
        assert tunnel.counters.bytes_to_peer == len(request) == service.bytes_from_peer
        assert tunnel.counters.bytes_from_peer == len(response) == service.bytes_to_peer
        assert tunnel.counters.connections == 1 and tunnel.counters.failures == 0

        # A header the resolver does not know is refused: the client sees the connection end.
        refused = await open_tcp_tunnel(link, "http", {"model": "unknown"})
        reader, writer = await asyncio.open_connection("127.0.0.1", refused.port)
        writer.write(request)
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            answer = b""  # a reset is as good as an EOF here: the point is that no data came
        assert answer == b""
        writer.close()
        await eventually(lambda: service.failures == 1 and refused.counters.failures == 1)
        await refused.close()
    finally:
        await tunnel.close()
        server.close()
        await server.wait_closed()


async def test_tunnel_passes_half_close_and_large_bodies(make_node: NodeFactory) -> None:
    a, b = await make_node(), await make_node()

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upper, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    serve_tcp_streams(b.transport, "upper", lambda peer, header: port)
    tunnel = await open_tcp_tunnel(await a.dial(b), "upper")
    try:
        body = os.urandom(300_000).hex().encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
        writer.write(body)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 20) == body.upper()
        writer.close()
    finally:
        await tunnel.close()
        server.close()
        await server.wait_closed()
