"""Placement: which models this node serves, whole or split, and a standby picking up work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from mesh_llm.api.routing import Endpoint, model_key
from mesh_llm.config import NodeConfig
from mesh_llm.mesh.gossip import PeerView
from mesh_llm.mesh.service import RPC_STREAM, MeshService
from mesh_llm.mesh.tunnel import TcpTunnel, open_tcp_tunnel
from mesh_llm.models.catalog import CATALOG
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.node._local import LocalServing
from mesh_llm.node.routing import RoutingTable
from mesh_llm.planning.demand import DemandTable, StandbyInfo
from mesh_llm.planning.standby import PickingUp, StandbyIdle, StandbyMachine
from mesh_llm.serving.hardware import Capacity
from mesh_llm.serving.model_server import ModelServer
from mesh_llm.split import Holdings, SplitManager
from mesh_llm.split.claims import peer_declined

log = logging.getLogger(__name__)


class Placement:
    """Owns the split manager, the standby's state and the mesh's demand as this node counts it.

    It is the split hosting's `SplitContext`: the node as split hosting sees it.
    """

    def __init__(
        self,
        config: NodeConfig,
        node_id: str,
        capacity: Capacity,
        serving: LocalServing,
        mesh: Callable[[], MeshService | None],
        changed: Callable[[], None],
    ) -> None:
        self._config = config
        self._node_id = node_id
        self._capacity = capacity
        self._serving = serving
        self._mesh = mesh
        self._changed = changed
        self.demand = DemandTable(node_id, config.demand)
        self.standby = StandbyMachine()  # idle, or picking up the model the mesh gave it
        self._tasks: set[asyncio.Task[None]] = set()
        self.split = SplitManager(
            self, config.split, planner=config.planner, backend=config.backend, state_dir=config.state_dir,
            client=config.client,
        )  # fmt: skip

    @property
    def serving(self) -> LocalServing:
        """The model servers this placement decides for."""
        return self._serving

    # ---- SplitContext -------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def capacity(self) -> Capacity:
        return self._capacity

    def holdings(self) -> Holdings:
        s = self._serving
        return Holdings(frozenset(s.on_disk), dict(s.resolved), s.local_files(), frozenset(s.declined))

    def mesh_peers(self) -> Mapping[str, PeerView]:
        mesh = self._mesh()
        return mesh.peers() if mesh is not None else {}

    def rtt_min_ms(self, peer_id: str) -> float | None:
        mesh = self._mesh()
        return mesh.rtt_min_ms(peer_id) if mesh is not None else None

    async def open_rpc_tunnel(self, peer_id: str, model: str, epoch: int) -> TcpTunnel | None:
        mesh = self._mesh()
        link = mesh.transport.link(peer_id) if mesh is not None else None
        if link is None:
            return None
        return await open_tcp_tunnel(link, RPC_STREAM, {"model": model, "epoch": epoch})

    def split_changed(self) -> None:
        self._changed()

    def add_server(self, server: ModelServer) -> None:
        self._serving.servers[server.name] = server

    def remove_server(self, name: str) -> None:
        self._serving.servers.pop(name, None)

    def add_resolved(self, model: ResolvedModel) -> None:
        self._serving.resolved[model.name] = model

    # ---- what this node serves ----------------------------------------------------------

    @property
    def role(self) -> str:
        s = self._serving
        if self._config.client:
            return "client"
        if self._config.idle:
            return "idle"
        if s.servers or s.pending or self.split.hosts:
            return "host"
        # A node whose model another node coordinates is that model's prospective worker.
        return "worker" if self.split.duties or self.split.wants else "standby"

    def local_endpoints(self, in_flight: dict[str, int]) -> list[Endpoint]:
        """This node's endpoints: its model servers, its split hosts, the models asked of it."""
        out = self._serving.server_endpoints(in_flight)
        for name, split_host in self.split.hosts.items():
            if name not in self._serving.servers:
                out.append(Endpoint(name, self._node_id, False, local=True, state=split_host.state.text))
        return out + self._serving.asked_not_started({e.model for e in out})

    def standbys(self) -> tuple[StandbyInfo, ...]:
        """Every standby of the mesh (this node too while it is one), as the planner sees them."""
        out = []
        if self.role == "standby":
            out.append(
                StandbyInfo(
                    self._node_id, self._capacity.offered_bytes, frozenset(self._serving.on_disk),
                    self._config.allow_download, declined=frozenset(self._serving.declined),
                )
            )  # fmt: skip
        for node_id, view in self.mesh_peers().items():
            rec = view.record
            if rec.role == "standby" and not rec.client:
                out.append(
                    StandbyInfo(
                        node_id,
                        rec.capacity_bytes,
                        frozenset(rec.on_disk),
                        True,
                        declined=peer_declined(rec.extra),
                    )
                )
        return tuple(out)

    def model_sizes(self) -> dict[str, int]:
        sizes = {e.name: e.size_bytes for e in CATALOG}
        sizes.update({name: m.size_bytes for name, m in self._serving.resolved.items()})
        return sizes

    async def serve(self, spec: str) -> None:
        """Resolve (downloading if allowed) one model and serve it: whole here, or as a split."""
        s = self._serving
        model = await s.resolve(spec)
        if model is None:
            return
        if model.name in s.servers or model.name in self.split.hosts:
            log.warning("%s given twice; serving it once", model.name)
            return
        s.resolved[model.name] = model
        if self._mesh() is not None and self.split.wants_split(model):
            log.info("%s (%.1f GB) needs the mesh: electing its host", model.name, model.size_bytes / 1e9)
            self.split.want(model)
            s.declined.discard(model.name)
            await self.split.reconcile()
            self._changed()
            return
        await s.start_server(model)

    def spawn_serve(self, name: str) -> None:
        """Serve `name` in the background (cancelled when the node stops)."""
        task = asyncio.create_task(self.serve(name), name=f"serve-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_serving(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def pick_up_work(self, table: RoutingTable) -> None:
        """A standby takes the model the mesh-wide rules give it (the table holds every node's share)."""
        decision = table.standby_work.get(self._node_id)
        if decision is None or decision.model in self._serving.declined:  # declined ones are never assigned
            return
        log.info(
            "standby picks up %s (%s, %.1f requests/min mesh-wide%s)",
            decision.model, decision.reason.value, decision.rate_rpm, ", downloading" if decision.download else "",
        )  # fmt: skip
        self.standby.set(PickingUp(decision.model))
        try:
            await self.serve(decision.model)
        finally:
            self.standby.set(StandbyIdle())
            self._changed()

    async def drop(self, model: str) -> bool:
        """Stop serving `model` here (the user asked); the mesh re-plans without this node."""
        s = self._serving
        split_names = {*self.split.hosts, *self.split.wants, *self.split.duties}
        name = next((n for n in [*s.servers, *split_names] if model_key(n) == model_key(model)), None)
        if name is None:
            return False
        s.declined.add(name)
        if name in split_names:
            await self.split.drop(name)
        else:
            await s.stop_server(name)
        log.info("dropped %s at the user's request", name)
        self._changed()
        return True
