"""The mesh the node is in: starting it, joining another, founding one, and what discovery sees."""

from __future__ import annotations

import asyncio
import logging
import time

from mesh_llm import __version__
from mesh_llm.discovery import MeshFacts, pick_model
from mesh_llm.mesh.gossip import PeerStatus
from mesh_llm.mesh.service import MeshService, MeshSettings, record_for
from mesh_llm.mesh.state_dir import load_or_create_credentials
from mesh_llm.mesh.token import InviteToken, MeshCredentials, new_mesh
from mesh_llm.models.catalog import CATALOG
from mesh_llm.models.resolve import on_disk_names
from mesh_llm.node._models import NodeModels

log = logging.getLogger(__name__)


class NodeMeshes(NodeModels):
    """Joining a mesh, founding one, and moving between them (what discovery asks of the node)."""

    async def _start_mesh(self) -> None:
        credentials = load_or_create_credentials(self.config.state_dir, self.tokens)
        self.mesh = self._mesh_service(credentials, self.tokens)
        await self.mesh.start()

    def _mesh_service(self, credentials: MeshCredentials, tokens: list[InviteToken]) -> MeshService:
        settings = MeshSettings(
            self.config.state_dir,
            self.config.bind_port,
            tuple(t.encode() for t in tokens),
            gossip=self.config.gossip,
            transport=self.config.transport,
            timing=self.config.mesh_timing,
        )
        return MeshService(
            self.identity,
            credentials,
            settings,
            record_for(self.node_id, __version__, **self._record_fields()),
            tokens=tokens,
            http_target=self.local_model_port,
            rpc_target=self.split.rpc_port,
            on_change=self._mesh_changed,
        )

    # ---- DiscoveryHost: what discovery sees of the node and asks of it --------------------

    @property
    def is_client(self) -> bool:
        return self.config.client

    def discovery_changed(self) -> None:
        self.feed.bump()

    def mesh_facts(self) -> MeshFacts | None:
        """A snapshot of this node's mesh for its listing; None while it is in none."""
        if self.mesh is None or self.stopping:
            return None
        live = {
            node_id: view.record
            for node_id, view in self.mesh.peers().items()
            if view.status is PeerStatus.ALIVE
        }
        members = sorted(
            [n for n, rec in live.items() if not rec.client] + ([] if self.config.client else [self.node_id])
        )
        serving = sorted(
            {name for name, server in self.servers.items() if server.ready}
            | {ad.name for rec in live.values() for ad in rec.models if ad.role == "host" and ad.ready}
        )
        disk = {*self.on_disk, *self.resolved} | {m for rec in live.values() for m in rec.on_disk}
        wanted = [m for m in self.demand.wanted(self._served_map(), time.monotonic()) if m not in serving]
        return MeshFacts(
            node_id=self.node_id,
            mesh_id=self.mesh.credentials.mesh_id_hex,
            invite_token=self.mesh.invite_token,
            mesh_port=self.mesh.transport.port,
            node_count=len(members),
            client_count=sum(rec.client for rec in live.values()) + int(self.config.client),
            serving=tuple(serving),
            wanted=tuple(wanted),
            on_disk=tuple(sorted(disk - set(serving))),
            total_vram_bytes=self.capacity.offered_bytes
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
        if self.config.client or self.servers or self.pending or self.split.hosts or self.config.models:
            return
        on_disk = set(self.on_disk) or set(await asyncio.to_thread(on_disk_names))
        name = pick_model(
            [(e.name, e.size_bytes) for e in CATALOG],
            self.capacity.offered_bytes,
            on_disk,
            allow_download=self.config.allow_download,
            fit_factor=self.config.planner.fit_factor,
        )
        if name is None:
            log.info(
                "no catalog model fits this node's %.1f GB: waiting as a standby",
                self.capacity.offered_bytes / 1e9,
            )
            return
        log.info(
            "serving %s in the new mesh (the largest catalog model that fits%s)",
            name,
            " and is on disk" if name in on_disk else "",
        )
        self._spawn_serve(name)

    def _spawn_serve(self, name: str) -> None:
        task = asyncio.create_task(self._serve(name), name=f"serve-{name}")
        self._serving_tasks.add(task)
        task.add_done_callback(self._serving_tasks.discard)

    async def _switch_mesh(
        self, new: MeshService, *, wait_for: str | None = None, timeout_s: float = 0.0
    ) -> None:
        """Start `new`; keep it (leaving the old mesh) once `wait_for`'s node is linked, else drop it."""
        old = self.mesh
        if old is not None and self.config.bind_port:
            await old.stop()  # a fixed port cannot be held by both
            self.mesh = old = None
        await new.start()
        if wait_for is not None:
            deadline = time.monotonic() + timeout_s
            while not ((link := new.transport.link(wait_for)) is not None and link.is_open):
                if time.monotonic() >= deadline or self.stopping:
                    await new.stop()
                    return
                await asyncio.sleep(0.05)
        self.mesh = new
        self.tokens = list(new.tokens)
        if old is not None:
            await old.stop()
        self._changed()

    def _mesh_changed(self) -> None:
        """A peer joined, left or changed its record: tell the page, and re-plan splits promptly."""
        self.feed.bump()
        self._poke.set()
