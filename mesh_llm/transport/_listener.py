"""The listening socket: routes datagrams to connections by connection id, creates new ones.

It also carries the mesh's address probes: tiny datagrams that cannot be QUIC (their first byte
has QUIC's fixed bit clear), sent from one listening socket to another so the receiver can tell
the sender, over their authenticated link, where its datagrams come from (its NAT mapping), and
sent towards a peer's mapping to open this node's NAT for it before that peer dials (a punch).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from mesh_llm.transport._adapter import CidCallback
from mesh_llm.transport._connection import Connection
from mesh_llm.transport._udp import drain_socket

log = logging.getLogger("mesh_llm.transport")

# A new client at `addr` sent an Initial for `cid`: its connection, or None to drop it.
Incoming = Callable[[Any, bytes, socket.socket, CidCallback], Connection | None]
# An address probe's payload and the address it came from.
ProbeHandler = Callable[[bytes, Any], None]

PROBE_MAGIC = b"\x00mesh-llm probe\x00"  # QUIC's fixed bit (0x40) is clear: never a QUIC packet
MAX_PROBE_PAYLOAD = 64


def probe_datagram(payload: bytes) -> bytes:
    """An address probe carrying `payload` (at most MAX_PROBE_PAYLOAD bytes)."""
    if len(payload) > MAX_PROBE_PAYLOAD:
        raise ValueError(f"a probe carries at most {MAX_PROBE_PAYLOAD} bytes")
    return PROBE_MAGIC + payload


def probe_payload(data: bytes) -> bytes | None:
    """The payload of an address probe, or None if `data` is not one."""
    if not data.startswith(PROBE_MAGIC) or len(data) > len(PROBE_MAGIC) + MAX_PROBE_PAYLOAD:
        return None
    return bytes(data[len(PROBE_MAGIC) :])


def destination_cid(data: bytes, short_cid_length: int) -> tuple[bytes, bool] | None:
    """A QUIC packet's destination connection id, and whether it is a version-1 Initial.

    Read from the version-independent invariants (RFC 8999): long headers carry the id's
    length, short headers carry ids of the length this endpoint issues. None if malformed.
    """
    if not data:
        return None
    if data[0] & 0x80:  # long header
        if len(data) < 6:
            return None
        length = data[5]
        if length > 20 or len(data) < 6 + length:
            return None
        version = int.from_bytes(data[1:5], "big")
        is_initial = version == 1 and (data[0] & 0x30) == 0
        return bytes(data[6 : 6 + length]), is_initial
    if len(data) < 1 + short_cid_length:
        return None
    return bytes(data[1 : 1 + short_cid_length]), False


class Listener(asyncio.DatagramProtocol):
    """The listening socket: routes datagrams to connections by connection id, creates new ones.

    A new connection starts only from a version-1 Initial of at least 1200 bytes (RFC 9000's
    minimum, which also bounds what an address spoofer can make us send). Anything else for an
    unknown connection id is dropped: neither engine's peers need version negotiation or retry.
    """

    CID_LENGTH = 8  # both engines' default connection id length

    def __init__(self, incoming: Incoming, sock: socket.socket, on_probe: ProbeHandler) -> None:
        self._incoming = incoming
        self._on_probe = on_probe
        self._sock = sock
        self._transport: asyncio.DatagramTransport | None = None
        self._by_cid: dict[bytes, Connection] = {}
        self._cids: dict[Connection, set[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def adopt(self, conn: Connection) -> None:
        """Route datagrams for a dialer that sends from this socket (a punch) to it."""
        conn.connection_made(self._transport)  # type: ignore[arg-type]
        self.on_cid(conn, conn.host_cid, True)

    def send(self, data: bytes, addr: Any) -> None:
        """Send one datagram from the listening socket (a probe); dropped once closed."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        touched: dict[int, Connection] = {}
        self._route(data, addr, touched)
        drain_socket(
            self._sock,
            self._transport,
            lambda more, sender: self._route(more, sender, touched),
            self.error_received,
        )
        for conn in touched.values():
            conn.datagrams_done()

    def error_received(self, exc: Exception) -> None:
        log.debug("listening socket error: %s", exc)

    def _route(self, data: bytes, addr: Any, touched: dict[int, Connection]) -> None:
        if data[:1] == PROBE_MAGIC[:1]:
            payload = probe_payload(data)
            if payload is not None:
                self._on_probe(payload, addr)
            return
        parsed = destination_cid(data, self.CID_LENGTH)
        if parsed is None:
            return
        cid, is_initial = parsed
        conn = self._by_cid.get(cid)
        if conn is None:
            if not is_initial or len(data) < 1200:
                return
            conn = self._incoming(addr, cid, self._sock, self.on_cid)
            if conn is None:
                return
            conn.connection_made(self._transport)  # type: ignore[arg-type]
            self.on_cid(conn, cid, True)
            self.on_cid(conn, conn.host_cid, True)  # the id it answers from (no event says so)
        conn.datagram_in(data, addr)
        touched[id(conn)] = conn

    def on_cid(self, conn: Any, cid: bytes, issued: bool) -> None:
        if issued:
            self._by_cid[cid] = conn
            self._cids.setdefault(conn, set()).add(cid)
        elif cid:
            self._by_cid.pop(cid, None)
            self._cids.get(conn, set()).discard(cid)
        else:  # the connection ended: forget all its ids
            for known in self._cids.pop(conn, set()):
                if self._by_cid.get(known) is conn:
                    del self._by_cid[known]
