"""Membership: the mesh the node is in, starting it, joining another, founding one, discovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mesh_llm import __version__
from mesh_llm.config import NodeConfig
from mesh_llm.discovery import Discovery, MeshFacts, pick_model
from mesh_llm.mesh.gossip import PeerStatus
from mesh_llm.mesh.service import MeshService, MeshSettings, record_for
from mesh_llm.mesh.state_dir import load_or_create_credentials
from mesh_llm.models.catalog import CATALOG
from mesh_llm.models.resolve import on_disk_names
from mesh_llm.node._placement import Placement
from mesh_llm.node.routing import RoutingTable
from mesh_llm.peer.identity import NodeIdentity
from mesh_llm.peer.token import InviteToken, MeshCredentials, decode_tokens, new_mesh
from mesh_llm.serving.hardware import Capacity

log = logging.getLogger(__name__)


class Membership:
    """Owns the mesh service, the tokens it joined with, and discovery (its `DiscoveryHost`).

    `record` gives this node's advertised fields; `changed` is called once the mesh is
    switched; `mesh_changed` whenever a peer joins, leaves or changes its record.
    """

    def __init__(
        self,
        config: NodeConfig,
        identity: NodeIdentity,
        capacity: Capacity,
        placement: Placement,
        *,
        record: Callable[[], dict[str, Any]],
        table: Callable[[], RoutingTable],
        stopping: Callable[[], bool],
        changed: Callable[[], None],
        mesh_changed: Callable[[], None],
        discovery_changed: Callable[[], None],
    ) -> None:
        self._config = config
        self._identity = identity
        self._capacity = capacity
        self._placement = placement
        self._record = record
        self._table = table
        self._stopping = stopping
        self._changed = changed
        self._mesh_changed = mesh_changed
        self._discovery_changed = discovery_changed
        self.tokens = decode_tokens(config.join)
        self.mesh: MeshService | None = None
        self.discovery: Discovery | None = None
        self._own_mesh: MeshCredentials | None = None  # the mesh --auto started, kept for a return

    async def start_mesh(self) -> None:
        credentials = load_or_create_credentials(self._config.state_dir, self.tokens)
        self.mesh = self._mesh_service(credentials, self.tokens)
        await self.mesh.start()

    def start_discovery(self) -> Discovery:
        self.discovery = Discovery(self._config.discovery, self, self._config.state_dir, __version__)
        return self.discovery

    def _mesh_service(self, credentials: MeshCredentials, tokens: list[InviteToken]) -> MeshService:
        settings = MeshSettings(
            self._config.state_dir,
            self._config.bind_port,
            tuple(t.encode() for t in tokens),
            gossip=self._config.gossip,
            transport=self._config.transport,
            timing=self._config.mesh_timing,
        )
        return MeshService(
            self._identity,
            credentials,
            settings,
            record_for(self._identity.node_id, __version__, **self._record()),
            tokens=tokens,
            http_target=self._placement.serving.local_model_socket,
            rpc_target=self._placement.split.rpc_port,
            on_change=self._mesh_changed,
        )

    def mesh_problem(self) -> str | None:
        """Why this node is not in its mesh yet (it has tokens but no peer), else None."""
        if self.mesh is None or not self.tokens or self.mesh.peers():
            return None
        return self.mesh.join_problem or "still dialling the inviter of its --join token"

    # ---- DiscoveryHost: what discovery sees of the node and asks of it --------------------

    @property
    def is_client(self) -> bool:
        return self._config.client

    def discovery_changed(self) -> None:
        self._discovery_changed()

    def mesh_facts(self) -> MeshFacts | None:
        """A snapshot of this node's mesh for its listing; None while it is in none."""
        if self.mesh is None or self._stopping():
            return None
        live = {
            node_id: view.record
            for node_id, view in self.mesh.peers().items()
            if view.status is PeerStatus.ALIVE
        }
        me = self._identity.node_id
        members = sorted(
            [n for n, rec in live.items() if not rec.client] + ([] if self._config.client else [me])
        )
        serving = self._placement.serving
        names = sorted(
            {name for name, server in serving.servers.items() if server.ready}
            | {ad.name for rec in live.values() for ad in rec.models if ad.role == "host" and ad.ready}
        )
        disk = {*serving.on_disk, *serving.resolved} | {m for rec in live.values() for m in rec.on_disk}
        demand = self._placement.demand
        wanted = [m for m in demand.wanted(self._table().served, time.monotonic()) if m not in names]
        return MeshFacts(
            node_id=me,
            mesh_id=self.mesh.credentials.mesh_id_hex,
            invite_token=self.mesh.invite_token,
            mesh_port=self.mesh.transport.port,
            node_count=len(members),
            client_count=sum(rec.client for rec in live.values()) + int(self._config.client),
            serving=tuple(names),
            wanted=tuple(wanted),
            on_disk=tuple(sorted(disk - set(names))),
            total_vram_bytes=self._capacity.offered_bytes
            + sum(r.capacity_bytes for r in live.values() if not r.client),
            peers=frozenset(live),
            members=tuple(members),
        )

    async def join_mesh(self, token: InviteToken, timeout_s: float) -> bool:
        """Move to the mesh of `token` if its node answers within `timeout_s`; else stay put."""
        if self.mesh is not None and self.mesh.credentials == token.credentials:
            return True
        await self._switch_mesh(
            self._mesh_service(token.credentials, [token]), wait_for=token.node_id, timeout_s=timeout_s
        )
        return self.mesh is not None and self.mesh.credentials == token.credentials

    async def start_own_mesh(self) -> None:
        """Found a mesh of our own (no candidate to join) and serve the best model we can."""
        if self._own_mesh is None:
            self._own_mesh = new_mesh()
        if self.mesh is None or self.mesh.credentials != self._own_mesh:
            await self._switch_mesh(self._mesh_service(self._own_mesh, []))
            if self.mesh is not None:
                # The token itself is not logged: a log line wraps, and a wrapped token does not
                # paste. `mesh-llm token` prints it on one line.
                log.info(
                    "started mesh %s; `mesh-llm token` prints its invite token",
                    self._own_mesh.mesh_id_hex[:8],
                )
        serving, split = self._placement.serving, self._placement.split
        if self._config.client or serving.servers or serving.pending or split.hosts or self._config.models:
            return
        on_disk = set(serving.on_disk) or set(await asyncio.to_thread(on_disk_names))
        name = pick_model(
            [(e.name, e.size_bytes) for e in CATALOG],
            self._capacity.offered_bytes,
            on_disk,
            allow_download=self._config.allow_download,
            fit_factor=self._config.planner.fit_factor,
        )
        if name is None:
            log.info(
                "no catalog model fits this node's %.1f GB: waiting as a standby",
                self._capacity.offered_bytes / 1e9,
            )
            return
        log.info(
            "serving %s in the new mesh (the largest catalog model that fits%s)",
            name,
            " and is on disk" if name in on_disk else "",
        )
        self._placement.spawn_serve(name)

    async def _switch_mesh(
        self, new: MeshService, *, wait_for: str | None = None, timeout_s: float = 0.0
    ) -> None:
        """Start `new`; keep it (leaving the old mesh) once `wait_for`'s node is linked, else drop it."""
        old = self.mesh
        if old is not None and self._config.bind_port:
            await old.stop()  # a fixed port cannot be held by both
            self.mesh = old = None
        await new.start()
        if wait_for is not None:
            deadline = time.monotonic() + timeout_s
            while not ((link := new.transport.link(wait_for)) is not None and link.is_open):
                if time.monotonic() >= deadline or self._stopping():
                    await new.stop()
                    return
                await asyncio.sleep(0.05)
        self.mesh = new
        self.tokens = list(new.tokens)
        if old is not None:
            await old.stop()
        self._changed()
