"""The listening socket: routes datagrams to connections by connection id, creates new ones."""

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

    def __init__(self, incoming: Incoming, sock: socket.socket) -> None:
        self._incoming = incoming
        self._sock = sock
        self._transport: asyncio.DatagramTransport | None = None
        self._by_cid: dict[bytes, Connection] = {}
        self._cids: dict[Connection, set[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

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
        parsed = destination_cid(data, self.CID_LENGTH)
        if parsed is None:
            return
        cid, is_initial = parsed
        conn = self._by_cid.get(cid)
        if conn is None:
            if not is_initial or len(data) < 1200:
                return
            conn = self._incoming(addr, cid, self._sock, self._on_cid)
            if conn is None:
                return
            conn.connection_made(self._transport)  # type: ignore[arg-type]
            self._on_cid(conn, cid, True)
            self._on_cid(conn, conn.host_cid, True)  # the id it answers from (no event says so)
        conn.datagram_in(data, addr)
        touched[id(conn)] = conn

    def _on_cid(self, conn: Any, cid: bytes, issued: bool) -> None:
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
