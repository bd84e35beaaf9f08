"""Address probes: where peers see this node's listening socket, and where we see theirs.

We announce a random nonce to a linked peer over the link (`addr_probe`), then send that nonce
in probe datagrams from our listening socket to the peer's listening address; the peer answers
over the link with the address the probe came from (`addr_seen`): our NAT's mapping. A report
counts only for a nonce we announced to that very peer. The same runs the other way for peers
that probe us; a probe that arrives before its announcement waits a few seconds for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from mesh_llm.errors import MalformedFrame, MeshError, TransportError
from mesh_llm.mesh.nat._messages import NatMessage, encode, ip_address_text
from mesh_llm.transport import MeshTransport, PeerLink

_NONCE_BYTES = 16
_ANNOUNCED_PER_PEER = 4  # a peer's nonces waiting for their probe
_EARLY_KEPT = 256  # probes that came before their announcement
_EARLY_TTL_S = 5.0


def expire(table: dict[str, Any], ttl: float, limit: int = 1024) -> None:
    """Drop entries (value[1] is when) older than `ttl`, then the oldest beyond `limit`."""
    now = time.monotonic()
    for key in [k for k, v in table.items() if now - v[1] > ttl]:
        del table[key]
    while len(table) > limit:
        del table[next(iter(table))]


class AddressProbes:
    """Both sides of address probing (see the module docstring)."""

    def __init__(
        self,
        transport: Callable[[], MeshTransport],
        retries_s: tuple[float, ...],
        on_report: Callable[[str, str], None],
    ) -> None:
        self._transport = transport
        self._retries = retries_s
        self._on_report = on_report  # (peer, the address it saw our probe come from)
        self._mine: dict[str, tuple[str, float]] = {}  # our nonce -> (peer, when)
        self._expect: dict[str, tuple[str, float]] = {}  # a peer's announced nonce -> (peer, when)
        self._early: dict[str, tuple[str, float]] = {}  # a probe before its announcement -> (from, when)
        self._seen_at: dict[str, str] = {}  # peer -> where its probes came from (its mapping)

    def seen_at(self, peer: str) -> str | None:
        """Where `peer`'s probes last came from: its NAT's mapping as this node sees it."""
        return self._seen_at.get(peer)

    def forget(self, peer: str) -> None:
        self._seen_at.pop(peer, None)

    async def probe(self, link: PeerLink) -> None:
        """One exchange with `link`'s peer at the address the link reaches it at."""
        try:
            address = ip_address_text(link.remote_address, "link address")
        except MalformedFrame:
            return
        nonce = secrets.token_hex(_NONCE_BYTES)
        self._mine[nonce] = (link.node_id, time.monotonic())
        expire(self._mine, 10.0)
        with contextlib.suppress(TransportError):
            link.send(encode(NatMessage("addr_probe", nonce=nonce)))
        waited = 0.0
        for at in self._retries:
            await asyncio.sleep(max(0.0, at - waited))
            waited = at
            if nonce not in self._mine or not link.is_open:
                return
            with contextlib.suppress(TransportError, MeshError, OSError):
                self._transport().send_probe(address, bytes.fromhex(nonce))

    def announced(self, peer: str, nonce: str) -> None:
        """`peer` will probe us with `nonce` (an addr_probe message)."""
        expire(self._expect, 10.0)
        if sum(1 for p, _ in self._expect.values() if p == peer) >= _ANNOUNCED_PER_PEER:
            return
        early = self._early.pop(nonce, None)
        if early is not None and time.monotonic() - early[1] <= _EARLY_TTL_S:
            self._answer(peer, nonce, early[0])
        else:
            self._expect[nonce] = (peer, time.monotonic())
            expire(self._expect, 10.0)

    def answered(self, peer: str, nonce: str, address: str) -> None:
        """`peer` saw our probe `nonce` come from `address` (an addr_seen message)."""
        mine = self._mine.get(nonce)
        if mine is not None and mine[0] == peer:  # only the peer it was announced to answers it
            del self._mine[nonce]
            self._on_report(peer, address)

    def on_probe(self, payload: bytes, address: str) -> None:
        """A probe reached our listening socket from `address`."""
        if len(payload) != _NONCE_BYTES:
            return  # a target's punch probe: it only opens a NAT
        nonce = payload.hex()
        expected = self._expect.pop(nonce, None)
        if expected is None:  # anyone can send these: keep the newest 256, aged when looked up
            self._early[nonce] = (address, time.monotonic())
            if len(self._early) > _EARLY_KEPT:
                del self._early[next(iter(self._early))]
            return
        self._answer(expected[0], nonce, address)

    def _answer(self, peer: str, nonce: str, address: str) -> None:
        try:
            address = ip_address_text(address, "probe source")
        except MalformedFrame:
            return
        self._seen_at[peer] = address
        link = self._transport().link(peer)
        if link is not None and link.is_open:
            with contextlib.suppress(TransportError):
                link.send(encode(NatMessage("addr_seen", nonce=nonce, addresses=(address,))))
