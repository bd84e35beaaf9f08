"""The mesh as the node sees it: transport + gossip engine + streams, run on the node's loop.

This is the thin I/O shell around the pure gossip engine: it feeds the engine transport events
and the clock, carries its messages out, dials the peers it learns about, keeps retrying the
invite tokens and recently lost peers, and keeps an HTTP transport to each remote model server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mesh_llm.errors import (
    AuthenticationError,
    ConfigError,
    MeshError,
    TransportError,
    WireError,
)
from mesh_llm.log_limits import RateLimitedLog
from mesh_llm.mesh._dials import DialBudget, LearnedDials
from mesh_llm.mesh.gossip import (
    GossipConfig,
    GossipEngine,
    NodeRecord,
    PeerJoined,
    PeerLeft,
    PeerRestarted,
    PeerView,
)
from mesh_llm.mesh.http_transport import HttpTransports, MeshHttpTransport
from mesh_llm.mesh.nat import MESSAGE_KINDS, NatTimings, NatView, Traversal, local_addresses
from mesh_llm.mesh.state_dir import last_port, save_port
from mesh_llm.mesh.tunnel import TunnelCounters, serve_tcp_streams
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import InviteToken, MeshCredentials
from mesh_llm.supervise import spawn_logged, supervised
from mesh_llm.transport import MeshTransport, PeerLink, TransportConfig

log = logging.getLogger(__name__)

HTTP_STREAM = "http"
RPC_STREAM = "rpc"
INVITER_REPORT_EVERY = 15  # after the first failure, repeat it in the log every this many tries


@dataclass(frozen=True)
class MeshTimings:
    """How the mesh service redials: built once by `build_config`, like the other configs."""

    dial_timeout_s: float = 5.0  # one attempt at an inviter or a lost peer
    bootstrap_retry_s: float = 2.0  # between attempts while no peer is linked yet
    lost_peer_retry_s: float = 3.0  # between attempts at peers lost without a goodbye
    lost_peer_memory_s: float = 600.0  # how long such a peer is redialled
    learned_dials: DialBudget = field(default_factory=DialBudget)  # dials of addresses learned from gossip
    nat: NatTimings = field(default_factory=NatTimings)  # probes, punches, relays


@dataclass(frozen=True)
class MeshSettings:
    """What the node tells the mesh layer at startup."""

    state_dir: Path
    bind_port: int = 0
    join: tuple[str, ...] = ()
    # Built by the caller: nothing below the node defaults or reads a setting.
    gossip: GossipConfig = field(kw_only=True)
    transport: TransportConfig = field(kw_only=True)
    timing: MeshTimings = field(kw_only=True)


class MeshService:
    """Membership, gossip and streams of one node. Start with `start()`, end with `stop()`."""

    def __init__(
        self,
        identity: NodeIdentity,
        credentials: MeshCredentials,
        settings: MeshSettings,
        self_record: NodeRecord,
        *,
        tokens: Iterable[InviteToken] = (),
        http_target: Callable[[str], Path | None] = lambda model: None,
        rpc_target: Callable[[str, str, object], int | None] = lambda peer, model, epoch: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.settings = settings
        self._timing = settings.timing
        self.tokens = list(tokens)
        # Records and relayed goodbyes count only when signed by the node they are about.
        self.engine = GossipEngine(
            self_record, settings.gossip, signer=identity.sign, verifier=NodeIdentity.verify
        )
        self.transport = MeshTransport(
            identity, credentials, host="::", port=settings.bind_port, config=settings.transport
        )
        self._reuse_port = last_port(settings.state_dir) if settings.bind_port == 0 else 0
        self.http_counters: TunnelCounters | None = None
        self._http_target = http_target
        self._rpc_target = rpc_target
        self.rpc_counters: TunnelCounters | None = None
        self._on_change = on_change
        self._rejects = RateLimitedLog(log)  # a flood of bad messages: one line per window
        self._http = HttpTransports(HTTP_STREAM)
        self._lost: dict[str, tuple[tuple[str, ...], float]] = {}  # node id -> (addresses, when lost)
        self._dialing: set[str] = set()
        self._learned = LearnedDials(self._timing.learned_dials)  # gossip's addresses, rate-limited
        self._inviter_tries: dict[str, int] = {}  # inviter node id -> failed dials so far
        self.join_problem: str | None = None  # why no inviter answered yet, while none has
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopped = False
        self.addresses: tuple[str, ...] = ()
        self.nat = Traversal(
            lambda: self.transport,
            lambda node_id: view.record if (view := self.engine.peers().get(node_id)) else None,
            lambda: self.addresses,
            self._nat_view,
            self._timing.nat,
            lambda peer, why: self._rejects.warning("nat", "bad NAT message from %s: %s", peer[:8], why),
        )

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._reuse_port:
            # Come back on last run's port so peers redialling us (and tokens handed out) find us.
            try:
                t = MeshTransport(
                    self.identity,
                    self.credentials,
                    host="::",
                    port=self._reuse_port,
                    config=self.transport.config,
                )
                await t.start()
                self.transport = t
            except (TransportError, ConfigError):
                log.info("last run's mesh port %d is taken; using a new one", self._reuse_port)
        t = self.transport
        t.on_message = self._on_message
        t.on_peer_connected = self._on_connected
        t.on_peer_lost = self._on_lost
        t.on_probe = self.nat.probes.on_probe
        t.relays.policy = self.nat.relay_policy
        self.http_counters = serve_tcp_streams(t, HTTP_STREAM, self._resolve_http)
        self.rpc_counters = serve_tcp_streams(t, RPC_STREAM, self._resolve_rpc)
        port = t.port or await t.start()
        save_port(self.settings.state_dir, port)
        self.addresses = tuple(local_addresses(port))
        self._send(self.engine.update_self(self._now(), addresses=self.addresses))
        self._spawn(supervised("gossip", self._gossip_loop), "gossip")
        self._spawn(supervised("redial", self._redial_loop), "redial")
        self._spawn(supervised("nat", self.nat.run), "nat")

    async def stop(self) -> None:
        """Say goodbye (peers drop us at once), close HTTP transports and the transport."""
        if self._stopped:
            return
        self._stopped = True
        self._send(self.engine.leave(self._now()))
        await asyncio.sleep(0.05)  # let the goodbye datagrams leave before the connections close
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nat.close()
        for http in self._http.drop():
            await http.aclose()
        await self.transport.close()

    @property
    def invite_token(self) -> str:
        return self.credentials.invite(self.identity.node_id, self.addresses).encode()

    # ---- what the node reads -----------------------------------------------------------

    def peers(self) -> dict[str, PeerView]:
        return self.engine.peers()

    def rtt_ms(self, node_id: str) -> float | None:
        link = self.transport.link(node_id)
        return link.rtt_ms if link is not None and link.is_open else None

    def rtt_min_ms(self, node_id: str) -> float | None:
        """The smallest round trip to a linked peer over the last 30 s: what decisions use."""
        link = self.transport.link(node_id)
        return link.rtt_min_ms if link is not None and link.is_open else None

    def advertise(self, **fields: Any) -> None:
        """Publish changed fields of this node's record (no-op when nothing changed)."""
        current = self.engine.self_record
        if all(getattr(current, k) == v for k, v in fields.items()):
            return
        self._send(self.engine.update_self(self._now(), **fields))

    async def http_transport(self, node_id: str, model: str) -> MeshHttpTransport:
        """The httpx transport that reaches `model`'s server on `node_id` over mesh streams."""
        link = self.transport.link(node_id)
        if link is None or not link.is_open:
            raise TransportError(f"no open link to {node_id[:8]}")
        http, retired = self._http.get(link, model)
        for old in retired:
            self._spawn(old.aclose(), "http-close")
        return http

    # ---- transport events --------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def _spawn(self, coro: Any, name: str) -> None:
        task = spawn_logged(coro, f"mesh-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, outgoing: list[tuple[str, dict[str, Any]]]) -> None:
        for peer_id, msg in outgoing:
            link = self.transport.link(peer_id)
            if link is None:
                continue
            try:
                link.send(msg)
            except (TransportError, WireError) as exc:
                log.debug("could not send %s to %s: %s", msg.get("t"), peer_id[:8], exc)
        self._drain_events()

    def _on_message(self, peer_id: str, msg: dict[str, Any]) -> None:
        if msg.get("t") in MESSAGE_KINDS:
            self.nat.receive(peer_id, msg)
            return
        now = self._now()
        try:
            out = self.engine.receive(peer_id, msg, now)
        except WireError as exc:
            self._rejects.warning("gossip", "malformed gossip from %s ignored: %s", peer_id[:8], exc, now=now)
            return
        self._send(out)

    def _on_connected(self, link: PeerLink) -> None:
        self._lost.pop(link.node_id, None)
        log.info("linked to peer %s at %s", link.short_id, link.remote_address)
        self._send(self.engine.peer_connected(link.node_id, self._now()))
        self.nat.link_up(link)
        self._on_change()

    def _on_lost(self, peer_id: str, reason: str) -> None:
        log.info("link to peer %s lost: %s", peer_id[:8], reason)
        view = self.engine.peers().get(peer_id)
        if view is not None and view.record.addresses:
            self._lost[peer_id] = (view.record.addresses, self._now())
        self._send(self.engine.peer_disconnected(peer_id, self._now()))
        self.nat.link_down(peer_id)
        self._spawn(self._close_http(peer_id), "http-close")
        self._on_change()

    def _drain_events(self) -> None:
        changed = False
        while (event := self.engine.next_event()) is not None:
            changed = True
            if isinstance(event, PeerJoined | PeerRestarted):
                rec = event.record
                log.info(
                    "peer %s %s (%s)",
                    rec.node_id[:8],
                    "joined" if isinstance(event, PeerJoined) else "restarted",
                    rec.role,
                )
                if isinstance(event, PeerRestarted):
                    self._spawn(self._close_http(rec.node_id), "http-close")
                self._learned.offer(rec.node_id, rec.addresses)
            elif isinstance(event, PeerLeft):
                log.info("peer %s left the mesh (%s)", event.node_id[:8], event.reason.value)
                if event.reason.value == "bye":
                    self._lost.pop(event.node_id, None)
                self._learned.forget(event.node_id)
                self._spawn(self._close_http(event.node_id), "http-close")
        for node_id, addresses in self._learned.due(self._now()):
            self._dial_soon(node_id, addresses)
        if changed:
            self._on_change()

    async def _close_http(self, node_id: str) -> None:
        for http in self._http.drop(node_id):
            await http.aclose()

    def _resolve_rpc(self, peer_id: str, header: dict[str, Any]) -> int | None:
        # Only the node that planned the split may reach our RPC worker, and only for that plan.
        model = header.get("model")
        return self._rpc_target(peer_id, model, header.get("epoch")) if isinstance(model, str) else None

    def _resolve_http(self, peer_id: str, header: dict[str, Any]) -> Path | None:
        model = header.get("model")
        return self._http_target(model) if isinstance(model, str) else None

    # ---- dialing -----------------------------------------------------------------------

    def _dial_soon(self, node_id: str, addresses: Iterable[str], *, inviter: bool = False) -> None:
        addresses = tuple(addresses)
        if node_id == self.identity.node_id or node_id in self._dialing or not addresses:
            return
        link = self.transport.link(node_id)
        if link is not None and link.is_open:
            return
        self._dialing.add(node_id)
        dial = self._dial_inviter(node_id, addresses) if inviter else self._dial(node_id, addresses)
        self._spawn(dial, f"dial-{node_id[:8]}")

    async def _dial(self, node_id: str, addresses: tuple[str, ...]) -> None:
        try:  # directly, else punched or relayed through members (see mesh/nat)
            if not await self.nat.reach(node_id, addresses) and node_id in self.engine.peers():
                # A punch or relay can fail for a while: it waits its turn in the dial budget again.
                log.debug("could not reach %s; it will be dialled again", node_id[:8])
                self._learned.offer(node_id, addresses)
        finally:
            self._dialing.discard(node_id)

    def _nat_view(self, view: NatView) -> None:
        self.advertise(observed=view.advertised, nat=view.nat)

    async def _dial_inviter(self, node_id: str, addresses: tuple[str, ...]) -> None:
        """Dial an invite token's node, telling the user what happens: a node that cannot reach
        its mesh would otherwise sit silent while its API knows no models."""
        tries = self._inviter_tries.get(node_id, 0)
        if tries == 0 and not self.transport.links:
            log.info("joining the mesh: dialling inviter %s at %s", node_id[:8], ", ".join(addresses))
        try:
            await self.transport.dial(
                list(addresses), expected_node_id=node_id, timeout=self._timing.dial_timeout_s
            )
        except AuthenticationError as exc:
            self._inviter_failed(node_id, tries, f"it refused us: {exc}")
        except MeshError as exc:
            self._inviter_failed(node_id, tries, str(exc))
        else:
            if tries:
                log.info("reached inviter %s after %d failed attempt(s)", node_id[:8], tries)
            self._inviter_tries.pop(node_id, None)
            self.join_problem = None
        finally:
            self._dialing.discard(node_id)

    def _inviter_failed(self, node_id: str, tries: int, reason: str) -> None:
        tries += 1
        self._inviter_tries[node_id] = tries
        if self.transport.links:  # in the mesh through other peers: the inviter is just one of them
            log.debug("inviter %s did not answer: %s", node_id[:8], reason)
            return
        self.join_problem = f"inviter {node_id[:8]} did not answer: {reason}"
        if tries == 1 or tries % INVITER_REPORT_EVERY == 0:
            log.warning(
                "could not join through inviter %s (attempt %d, %g s deadline): %s; retrying every %g s",
                node_id[:8], tries, self._timing.dial_timeout_s, reason, self._timing.bootstrap_retry_s,
            )  # fmt: skip

    async def _redial_loop(self) -> None:
        """Keep trying the invite tokens' nodes and recently lost peers until they answer."""
        while True:
            now = self._now()
            for token in self.tokens:
                self._dial_soon(token.node_id, token.addresses, inviter=True)
            for node_id, (addresses, since) in list(self._lost.items()):
                if now - since > self._timing.lost_peer_memory_s:
                    del self._lost[node_id]
                else:
                    self._dial_soon(node_id, addresses)
            timing = self._timing
            await asyncio.sleep(
                timing.bootstrap_retry_s if not self.transport.links else timing.lost_peer_retry_s
            )

    async def _gossip_loop(self) -> None:
        interval = self.settings.gossip.push_interval_s
        while True:
            timer = self.engine.get_timer()
            if timer is None:
                return
            delay = max(0.0, min(interval, timer - self._now()))
            await asyncio.sleep(delay)
            self._send(self.engine.tick(self._now()))


def record_for(node_id: str, software: str, **fields: Any) -> NodeRecord:
    """A fresh record for this process; the incarnation is the start time in ms."""
    return replace(
        NodeRecord(node_id=node_id, incarnation=int(time.time() * 1000), software=software), **fields
    )
