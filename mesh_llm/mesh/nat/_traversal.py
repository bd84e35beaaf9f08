"""Members behind NATs reaching each other: observed addresses, punches, relays, upgrades.

The node's four parts in it:
- As any linked node: it probes each peer it dialed from its listening socket, and the peer
  reports the address the probe came from (`addr_probe` / `addr_seen`): what peers observe of
  our NAT's mapping. It reports the same for peers that probe it.
- As the one who wants a link (`reach`): it dials the peer's own addresses when the peer is not
  behind a NAT; otherwise, or when that fails, it asks a member linked to both to coordinate a
  punch (`punch_ask`), dials the addresses the coordinator names from its listening socket while
  the peer sends probes towards ours, and if that fails too, links through a member that both
  reach (a relay, see mesh_llm/transport/_relay.py).
- As the coordinator: it tells both ends at once (`punch` to the target, `punch_go` to the
  asker), naming the addresses it observes them at first: that moment is the agreed one, and
  QUIC's retransmission of the dial's first packet and the target's repeated probes cover
  the skew.
- As the target: it sends probes to the asker's addresses for a few seconds; the dial that
  follows arrives through the hole they open and is labelled "punched".
A relayed link keeps trying to go direct, backing off while it fails.

Nothing here trusts a member beyond a hint: addresses are parsed as literal IPs, probes go only
to addresses a peer reported, and every request is rate-limited per member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_llm.errors import MalformedFrame, MeshError, TransportError
from mesh_llm.mesh.gossip import NodeRecord
from mesh_llm.mesh.nat._messages import MAX_ADDRESSES, NatMessage, encode, ip_address_text, parse
from mesh_llm.mesh.nat._observed import NAT_EIM, NAT_NONE, NAT_SYMMETRIC, NAT_UNKNOWN, NatView, Observations
from mesh_llm.mesh.nat._probes import AddressProbes
from mesh_llm.transport import MeshTransport, PeerLink

log = logging.getLogger("mesh_llm.mesh.nat")

_DIAL_LIMIT = 24  # addresses one punched dial tries: a coordinator's 6 and a record's (at most 16)
PUNCH_PAYLOAD = b"punch"  # what a target's probes carry: not a nonce, so never answered


@dataclass(frozen=True)
class NatTimings:
    """How the node probes, punches and relays; built once by `build_config`."""

    relay: bool = True  # relay for other members (--no-relay turns it off)
    probe_every_s: float = 15.0  # refresh what peers observe (and the NAT's mapping with it)
    probe_retries_s: tuple[float, ...] = (0.0, 0.3, 1.0)  # UDP probes of one exchange
    ask_timeout_s: float = 2.0  # a coordinator's answer
    punch_timeout_s: float = 5.0  # a punched dial's deadline
    punch_probe_every_s: float = 0.1  # the target's probes towards the asker
    relay_timeout_s: float = 5.0  # a relayed dial's deadline
    upgrade_every_s: float = 30.0  # a relayed link tries to go direct this often at first,
    upgrade_max_s: float = 300.0  # doubling while it fails, up to this
    asks_per_window: int = 8  # punch requests one member may make per window
    ask_window_s: float = 10.0
    coordinators: int = 3  # members asked before relaying


class _Rate:
    """At most `limit` events per key within `window_s` (bounded keys)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self._limit, self._window = limit, window_s
        self._events: dict[str, list[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        recent = [t for t in self._events.pop(key, []) if now - t < self._window]
        if len(self._events) >= 1024:
            del self._events[next(iter(self._events))]
        self._events[key] = recent
        if len(recent) >= self._limit:
            return False
        recent.append(now)
        return True


class Traversal:
    """This node's side of NAT traversal (see the module docstring)."""

    def __init__(
        self,
        transport: Callable[[], MeshTransport],
        records: Callable[[str], NodeRecord | None],
        local_addresses: Callable[[], tuple[str, ...]],
        on_view: Callable[[NatView], None],
        timings: NatTimings,
        warn: Callable[[str, str], object],
    ) -> None:
        self._transport = transport
        self._records = records
        self._local = local_addresses
        self._on_view = on_view
        self.timings = timings
        self._warn = warn
        self.observations = Observations(ttl_s=max(120.0, 4 * timings.probe_every_s))
        self.view = NatView("unknown", ())
        self.probes = AddressProbes(transport, timings.probe_retries_s, self._reported)
        self._expecting: dict[str, float] = {}  # peer -> until when its dial counts as punched
        self._asks: dict[tuple[str, str], asyncio.Future[NatMessage]] = {}
        self._rate = _Rate(timings.asks_per_window, timings.ask_window_s)
        self._reaching: set[str] = set()
        self._upgrade_at: dict[str, tuple[float, float]] = {}  # relayed peer -> (next try, gap)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _now(self) -> float:
        return time.monotonic()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"nat-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def relay_policy(self, requester: str, target: str) -> str | None:
        """Whether this node relays (the transport checks both ends are its direct members)."""
        return None if self.timings.relay else "this node does not relay (--no-relay)"

    # --- links coming and going -------------------------------------------------------------

    def link_up(self, link: PeerLink) -> None:
        until = self._expecting.pop(link.node_id, 0.0)
        if not link.initiated_locally and link.path == "direct" and self._now() < until:
            link.path = "punched"  # it came through the hole our probes opened
            log.info("link with %s came through this node's NAT: punched", link.short_id)
        if not link.relayed:
            # A probe to a peer's dialer socket (it dialed us from one) is dropped there; one to
            # a listening socket (we dialed it, or it punched through to us) is answered.
            self._spawn(self.probes.probe(link), f"probe-{link.short_id}")

    def link_down(self, peer: str) -> None:
        self.probes.forget(peer)
        self._upgrade_at.pop(peer, None)
        self.observations.forget(peer)

    async def run(self) -> None:
        """Refresh observed addresses and try to upgrade relayed links, for ever."""
        while True:
            await asyncio.sleep(min(self.timings.probe_every_s, self.timings.upgrade_every_s))
            now = self._now()
            for node_id, link in self._transport().links.items():
                if link.relayed:
                    self._maybe_upgrade(node_id, now)
                elif link.is_open:
                    self._spawn(self.probes.probe(link), f"probe-{link.short_id}")
            self._update_view()

    # --- observed addresses ---------------------------------------------------------------

    def _reported(self, peer: str, address: str) -> None:
        self.observations.report(peer, address, self._now())
        self._update_view()

    def _update_view(self) -> None:
        view = self.observations.view(self._local(), self._now())
        if view != self.view:
            if view.nat != self.view.nat:
                log.info(
                    "NAT: %s; peers see this node at %s",
                    view.nat,
                    ", ".join(view.observed) or "its own address",
                )
            self.view = view
            self._on_view(view)

    # --- messages ---------------------------------------------------------------------------

    def receive(self, peer: str, msg: dict[str, Any]) -> None:
        """A traversal message from a linked peer (see _messages.py)."""
        try:
            message = parse(msg)
        except MalformedFrame as exc:
            self._warn(peer, str(exc))
            return
        kind = message.kind
        if kind == "addr_probe":
            self.probes.announced(peer, message.nonce)
        elif kind == "addr_seen":
            self.probes.answered(peer, message.nonce, message.addresses[0])
        elif kind == "punch_ask":
            self._coordinate(peer, message)
        elif kind == "punch":
            self._open_for(peer, message)
        else:  # punch_go, punch_no: an answer to one of our asks
            future = self._asks.get((peer, message.peer))
            if future is not None and not future.done():
                future.set_result(message)

    def _send(self, peer: str, message: NatMessage) -> None:
        link = self._transport().link(peer)
        if link is not None and link.is_open:
            with contextlib.suppress(TransportError):
                link.send(encode(message))

    # --- as the coordinator -----------------------------------------------------------------

    def _coordinate(self, asker: str, ask: NatMessage) -> None:
        now = self._now()
        if not self._rate.allow(f"ask:{asker}", now):
            return
        target = self._transport().link(ask.peer)
        if ask.peer == asker or target is None or not target.is_open or target.relayed:
            self._send(asker, NatMessage("punch_no", peer=ask.peer, why="no direct link to it"))
            return
        asker_at = _unique([self.probes.seen_at(asker)], ask.addresses)
        self._send(ask.peer, NatMessage("punch", peer=asker, addresses=asker_at))
        self._send(asker, NatMessage("punch_go", peer=ask.peer, addresses=self._addresses_of(ask.peer)))

    def _addresses_of(self, node_id: str) -> tuple[str, ...]:
        """Where `node_id` may be dialled: where we see it, then what its record says."""
        record = self._records(node_id)
        listed = (*record.observed, *record.addresses) if record is not None else ()
        return _unique([self.probes.seen_at(node_id)], listed)

    # --- as the target ----------------------------------------------------------------------

    def _open_for(self, coordinator: str, punch: NatMessage) -> None:
        now = self._now()
        if not (self._rate.allow(f"punch:{coordinator}", now) and self._rate.allow(f"for:{punch.peer}", now)):
            return
        self._expecting = {p: until for p, until in self._expecting.items() if until > now}
        self._expecting[punch.peer] = now + self.timings.punch_timeout_s + 1.0
        self._spawn(self._send_punch(punch.peer, punch.addresses), f"open-{punch.peer[:8]}")

    async def _send_punch(self, asker: str, addresses: tuple[str, ...]) -> None:
        every = self.timings.punch_probe_every_s
        for _ in range(int(self.timings.punch_timeout_s / every)):
            link = self._transport().link(asker)
            if link is not None and link.is_open and not link.relayed:
                return
            for address in addresses:
                with contextlib.suppress(TransportError, MeshError, OSError):
                    self._transport().send_probe(address, PUNCH_PAYLOAD)
            await asyncio.sleep(every)

    # --- as the one who wants a link --------------------------------------------------------

    async def reach(self, node_id: str, addresses: tuple[str, ...]) -> bool:
        """Link to `node_id`: directly, by a punch, or through a relay. Whether it worked."""
        if node_id in self._reaching:
            return False
        self._reaching.add(node_id)
        try:
            return await self._reach(node_id, addresses)
        finally:
            self._reaching.discard(node_id)

    async def _reach(self, node_id: str, addresses: tuple[str, ...]) -> bool:
        transport = self._transport()
        record = self._records(node_id)
        # Peers see it at another address than its own (one report, or several agreeing).
        behind_nat = record is not None and record.nat in (NAT_EIM, NAT_SYMMETRIC, NAT_UNKNOWN)
        if not behind_nat:
            try:
                await transport.dial(
                    list(addresses), expected_node_id=node_id, timeout=self.timings.punch_timeout_s
                )
                return True
            except MeshError as exc:
                log.debug("direct dial of %s failed: %s", node_id[:8], exc)
        relays = await self._punch(node_id, addresses)
        if relays is None:
            return True
        for relay in relays:
            try:
                link = await transport.dial_via(relay, node_id, timeout=self.timings.relay_timeout_s)
            except MeshError as exc:
                log.debug("relay %s to %s failed: %s", relay[:8], node_id[:8], exc)
                continue
            log.info("linked to %s through relay %s", node_id[:8], relay[:8])
            return link.is_open
        return False

    async def _punch(self, node_id: str, addresses: tuple[str, ...]) -> list[str] | None:
        """Ask coordinators for a punch and dial through it: None if linked, else the members
        that have a direct link to `node_id` (the relays to try)."""
        transport = self._transport()
        relays: list[str] = []
        own = _unique(self.view.observed, tuple(a for a, kind in self.view.addresses if kind == "local"))
        for coordinator in self._coordinators(node_id)[: self.timings.coordinators]:
            answer = await self._ask(coordinator, node_id, own)
            if answer is None or answer.kind != "punch_go":
                continue
            relays.append(coordinator)
            # What the coordinator sees first, then every address the target's record lists (a
            # member on our own LAN answers at its LAN address, whatever NAT both sit behind).
            targets = _unique(answer.addresses, addresses, limit=_DIAL_LIMIT)
            try:
                link = await transport.dial(
                    list(targets), expected_node_id=node_id, timeout=self.timings.punch_timeout_s, punch=True
                )
            except MeshError as exc:
                log.debug("punch to %s via %s failed: %s", node_id[:8], coordinator[:8], exc)
                break  # the next coordinator sees the same NATs: relay instead
            if not link.relayed:
                return None
        return relays  # only a member with a direct link to node_id can relay to it

    def _coordinators(self, node_id: str) -> list[str]:
        """Members we hold a direct link to, those with a public address first."""
        links = [
            link
            for n, link in self._transport().links.items()
            if n != node_id and link.is_open and not link.relayed
        ]

        def rank(link: PeerLink) -> tuple[bool, float]:
            record = self._records(link.node_id)
            public = record is not None and record.nat == NAT_NONE
            return (not public, link.rtt_min_ms or 0.0)

        return [link.node_id for link in sorted(links, key=rank)]

    async def _ask(self, coordinator: str, node_id: str, own: tuple[str, ...]) -> NatMessage | None:
        key = (coordinator, node_id)
        future: asyncio.Future[NatMessage] = asyncio.get_running_loop().create_future()
        self._asks[key] = future
        try:
            self._send(coordinator, NatMessage("punch_ask", peer=node_id, addresses=own))
            return await asyncio.wait_for(future, self.timings.ask_timeout_s)
        except TimeoutError:
            return None
        finally:
            if self._asks.get(key) is future:
                del self._asks[key]

    def _maybe_upgrade(self, node_id: str, now: float) -> None:
        at, gap = self._upgrade_at.get(
            node_id, (now + self.timings.upgrade_every_s, self.timings.upgrade_every_s)
        )
        if node_id not in self._upgrade_at:
            self._upgrade_at[node_id] = (at, gap)
        if now < at or node_id in self._reaching:
            return
        self._upgrade_at[node_id] = (now + gap, min(gap * 2, self.timings.upgrade_max_s))
        self._spawn(self._upgrade(node_id), f"upgrade-{node_id[:8]}")

    async def _upgrade(self, node_id: str) -> None:
        self._reaching.add(node_id)
        try:
            record = self._records(node_id)
            if await self._punch(node_id, record.addresses if record is not None else ()) is None:
                log.info("link to %s upgraded from relayed to punched", node_id[:8])
                self._upgrade_at.pop(node_id, None)
        finally:
            self._reaching.discard(node_id)


def _unique(
    first: list[str | None] | tuple[str, ...], then: tuple[str, ...], limit: int = MAX_ADDRESSES
) -> tuple[str, ...]:
    """Valid literal addresses from both, in order, without repeats, at most `limit`."""
    out: dict[str, None] = {}
    for address in (*first, *then):
        if address is None:
            continue
        with contextlib.suppress(MalformedFrame):
            out[ip_address_text(address, "address")] = None
    return tuple(out)[:limit]
