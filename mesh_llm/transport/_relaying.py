"""Relayed links, this node's three parts in them (see _relay.py for the path itself).

As the dialer: `dial_via` opens a `_relay` stream on its link to the relay and runs a QUIC
client and mesh authentication through it. As the relay: `serve_relay` checks the request and
copies bytes to the other end. As the other end: `serve_relayed` runs a QUIC server on the
stream the relay opened, and authentication admits the dialer like any other peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from mesh_llm.errors import PeerUnreachable, TransportError
from mesh_llm.peer.identity import is_node_id
from mesh_llm.transport._codes import CloseCode, StreamCode
from mesh_llm.transport._compat import QuicEngine, ServerCredentials
from mesh_llm.transport._config import TransportConfig
from mesh_llm.transport._connection import Connection
from mesh_llm.transport._link import PeerLink
from mesh_llm.transport._listener import destination_cid
from mesh_llm.transport._relay import (
    RELAY_DATAGRAM_SIZE,
    RELAY_STREAM,
    RELAYED_STREAM,
    FrameReader,
    RelayBudget,
    RelayPath,
    feed_connection,
    relay_between,
)
from mesh_llm.transport._streams import MeshStreamReader, MeshStreamWriter

log = logging.getLogger("mesh_llm.transport")

# What a relayed connection's QUIC engine is told the peer's address is: an address of the
# discard-only prefix (RFC 6666), a label that no packet is ever sent to.
RELAY_ADDRESS = ("100::1", 1, 0, 0)
_READ = 1 << 16

# (the requesting member, the member it wants to reach) -> why not, or None to relay.
RelayPolicy = Callable[[str, str], "str | None"]


class RelayOwner(Protocol):
    """What relaying needs of the endpoint (MeshTransport)."""

    @property
    def node_id(self) -> str: ...
    @property
    def config(self) -> TransportConfig: ...

    def link(self, node_id: str) -> PeerLink | None: ...
    def relayed_connection(self, quic: Any, *, dialer: bool, relay: str) -> Connection: ...
    def spawn(self, awaitable: Any, name: str | None = None) -> None: ...


class Relaying:
    """Relayed links: dialing through a relay, relaying, and accepting through one."""

    def __init__(
        self, owner: RelayOwner, engine: QuicEngine, credentials: ServerCredentials, relay_bytes_per_s: int
    ) -> None:
        self._owner = owner
        self._engine = engine
        self._credentials = credentials
        self.budget = RelayBudget(relay_bytes_per_s, time.monotonic)
        self.policy: RelayPolicy = lambda src, dst: None
        self.relayed_bytes = 0  # bytes this node copied for others, both directions
        self.relaying = 0  # paths this node relays now

    def _count(self, size: int) -> None:
        self.relayed_bytes += size

    # --- as the dialer ----------------------------------------------------------------------

    async def connect_via(self, relay_id: str, node_id: str, deadline: float) -> Connection:
        """A QUIC connection to `node_id` through the relay `relay_id`; the caller authenticates it."""
        relay = self._owner.link(relay_id)
        if relay is None or not relay.is_open or relay.relayed:
            raise PeerUnreachable(f"no direct link to relay {relay_id[:8]}")
        reader, writer = relay.open_internal_stream(RELAY_STREAM, {"to": node_id})
        path = RelayPath(writer)
        quic = self._engine.client_connection(
            datagram_size=RELAY_DATAGRAM_SIZE, idle_timeout=self._owner.config.idle_timeout
        )
        conn = self._owner.relayed_connection(quic, dialer=True, relay=relay_id)
        conn.connection_made(path)  # type: ignore[arg-type]
        conn.udp = path  # type: ignore[assignment]
        self._owner.spawn(self._carry(reader, conn), name=f"relayed {node_id[:8]} via {relay_id[:8]}")
        try:
            conn.connect(RELAY_ADDRESS)
            await conn.wait_handshake(deadline)
            return conn
        except BaseException:
            conn.abort("relayed dial did not finish")
            raise

    async def _carry(self, reader: MeshStreamReader, conn: Connection) -> None:
        why = await feed_connection(reader, FrameReader(), conn, RELAY_ADDRESS)
        conn.error_received(PeerUnreachable(why))  # a dial still shaking hands fails now
        conn.close_with(CloseCode.GOODBYE, why)

    # --- as the relay -----------------------------------------------------------------------

    async def serve_relay(
        self, peer_id: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        """A member asks this node to carry its packets to another member."""
        target = header.get("to")
        refusal = self._refusal(peer_id, target)
        if refusal is not None:
            log.info("refused to relay for %s: %s", peer_id[:8], refusal)
            writer.abort(StreamCode.REFUSED)
            return
        assert isinstance(target, str)
        link = self._owner.link(target)
        assert link is not None
        far = link.open_internal_stream(RELAYED_STREAM, {"from": peer_id})
        self.relaying += 1
        log.info("relaying between %s and %s", peer_id[:8], target[:8])
        try:
            await relay_between(((reader, writer), far), self.budget, self._count)
        finally:
            self.relaying -= 1
            log.info("stopped relaying between %s and %s", peer_id[:8], target[:8])

    def _refusal(self, peer_id: str, target: object) -> str | None:
        if not isinstance(target, str) or not is_node_id(target):
            return "the request names no node"
        asker = self._owner.link(peer_id)
        if asker is None or not asker.is_open or asker.relayed:
            return "the asker is itself reached through a relay"  # relays never chain
        if target in (peer_id, self._owner.node_id):
            return "a relay to itself"
        link = self._owner.link(target)
        if link is None or not link.is_open:
            return f"no link to {target[:8]}"
        if link.relayed:
            return f"{target[:8]} is itself reached through a relay"
        return self.policy(peer_id, target)

    # --- as the other end -------------------------------------------------------------------

    async def serve_relayed(
        self, relay_id: str, header: dict[str, Any], reader: MeshStreamReader, writer: MeshStreamWriter
    ) -> None:
        """A relay carries another member's connection to this node: serve it like a dialer's."""
        frames = FrameReader()
        first: list[bytes] = []
        try:
            async with asyncio.timeout(self._owner.config.handshake_timeout):
                while not first:
                    chunk = await reader.read(_READ)
                    if not chunk:
                        return
                    first = frames.feed(chunk)
        except (TimeoutError, TransportError):
            writer.abort(StreamCode.CANCELLED)
            return
        parsed = destination_cid(first[0], 8)
        if parsed is None or not parsed[1]:
            writer.abort(StreamCode.PROTOCOL_ERROR)
            return
        quic = self._engine.server_connection(
            self._credentials,
            datagram_size=RELAY_DATAGRAM_SIZE,
            idle_timeout=self._owner.config.idle_timeout,
            original_dcid=parsed[0],
        )
        conn = self._owner.relayed_connection(quic, dialer=False, relay=relay_id)
        path = RelayPath(writer)
        conn.connection_made(path)  # type: ignore[arg-type]
        conn.udp = path  # type: ignore[assignment]
        why = await feed_connection(reader, frames, conn, RELAY_ADDRESS, first)
        conn.close_with(CloseCode.GOODBYE, why)
