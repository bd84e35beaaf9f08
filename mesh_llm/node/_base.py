"""The node's state and what every part of it shares (no I/O at construction)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_llm.api.console import ChangeFeed
from mesh_llm.api.proxy import Proxy
from mesh_llm.config import NodeConfig
from mesh_llm.discovery import Discovery
from mesh_llm.errors import MeshError
from mesh_llm.mesh.gossip import ModelAd, PeerView
from mesh_llm.mesh.identity import NodeIdentity
from mesh_llm.mesh.service import RPC_STREAM, MeshService
from mesh_llm.mesh.state_dir import load_identity
from mesh_llm.mesh.token import MeshCredentials, decode_tokens
from mesh_llm.mesh.tunnel import TcpTunnel, open_tcp_tunnel
from mesh_llm.models.catalog import served_name
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.planning.claims import intents_record
from mesh_llm.planning.demand import DemandTable
from mesh_llm.runtime import RuntimeFile
from mesh_llm.serving.backend import BackendState, ModelServer
from mesh_llm.serving.hardware import Capacity, detect_capacity
from mesh_llm.split import Holdings, SplitManager
from mesh_llm.states import PendingModels, StandbyMachine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeResources:
    """What the node finds on its machine before it starts: its identity and its memory."""

    identity: NodeIdentity
    capacity: Capacity


def load_resources(config: NodeConfig) -> NodeResources:
    """Read (or create) the node's key file and detect its devices: the node's start-up I/O."""
    return NodeResources(
        load_identity(config.state_dir),
        detect_capacity(config.max_vram_bytes, client=config.client, device=config.device),
    )


class NodeCore:
    """The node's state, and what every part of it shares: its role, its record, the split seam."""

    def __init__(self, config: NodeConfig, resources: NodeResources) -> None:
        self.config = config
        self.tokens = decode_tokens(config.join)
        self.identity = resources.identity
        self.node_id = self.identity.node_id
        self.mesh: MeshService | None = None
        self.known_models: dict[str, float] = {}  # model -> when last seen served in the mesh
        self.started_at = time.time()
        self.feed = ChangeFeed()
        self.servers: dict[str, ModelServer] = {}
        self.resolved: dict[str, ResolvedModel] = {}
        self.pending = PendingModels()  # models asked for with no model server yet: resolving, failed
        # --model value -> the name it will be served under: routing knows it from the first request
        self.asked = {spec: served_name(spec) for spec in config.models}
        self.capacity: Capacity = resources.capacity
        self.in_flight: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.routed: Counter[tuple[str, str]] = Counter()  # (model, host node id) -> requests sent there
        self.demand = DemandTable(self.node_id, config.demand)
        self.declined: set[str] = set()  # models the user dropped here: never picked up again
        self.on_disk: tuple[str, ...] = ()
        self.standby = StandbyMachine()  # idle, or picking up the model the mesh gave it
        self.split = SplitManager(
            self, config.split, planner=config.planner, backend=config.backend, state_dir=config.state_dir,
            client=config.client,
        )  # fmt: skip
        self.api_port: int | None = None
        self.console_port: int | None = None
        self.stopping = False
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()  # set when the mesh changed; wakes the advertise loop early
        self._proxy: Proxy | None = None
        self._grace_s = config.timing.stop_grace_s
        self.runtime = RuntimeFile(config.state_dir)
        self.fatal: MeshError | None = None  # why the node stopped by itself (run() returns 1)
        self.discovery: Discovery | None = None
        self._serving_tasks: set[asyncio.Task[None]] = set()
        self._own_mesh: MeshCredentials | None = None  # the mesh --auto started, kept for a return

    # ---- SplitContext, used by split hosting -------------------------------------------

    def holdings(self) -> Holdings:
        return Holdings(
            frozenset(self.on_disk), dict(self.resolved), self.local_files(), frozenset(self.declined)
        )

    def mesh_peers(self) -> Mapping[str, PeerView]:
        return self.mesh.peers() if self.mesh is not None else {}

    def rtt_min_ms(self, peer_id: str) -> float | None:
        return self.mesh.rtt_min_ms(peer_id) if self.mesh is not None else None

    async def open_rpc_tunnel(self, peer_id: str, model: str, epoch: int) -> TcpTunnel | None:
        link = self.mesh.transport.link(peer_id) if self.mesh is not None else None
        if link is None:
            return None
        return await open_tcp_tunnel(link, RPC_STREAM, {"model": model, "epoch": epoch})

    def split_changed(self) -> None:
        self._changed()

    def add_server(self, server: ModelServer) -> None:
        self.servers[server.name] = server

    def remove_server(self, name: str) -> None:
        self.servers.pop(name, None)

    def add_resolved(self, model: ResolvedModel) -> None:
        self.resolved[model.name] = model

    # ---- status ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.config.idle:
            return "idle"
        if self.config.client:
            return "client"
        if not self.servers and not self.pending and not self.split.hosts:
            if self.split.duties:
                return "worker"
            return "waiting" if self.split.wants else "standby"
        if any(not h.server for h in self.split.hosts.values()):
            return "waiting"
        states = [s.status().state for s in self.servers.values()]
        if self.pending or any(s is BackendState.STARTING for s in states) or not states:
            return "starting"
        if all(s is BackendState.READY for s in states):
            return "serving"
        return "degraded"

    @property
    def role(self) -> str:
        if self.config.client:
            return "client"
        if self.config.idle:
            return "idle"
        if self.servers or self.pending or self.split.hosts:
            return "host"
        # A node whose model another node coordinates is that model's prospective worker.
        return "worker" if self.split.duties or self.split.wants else "standby"

    def local_files(self) -> dict[str, Path]:
        """GGUF files offered from `<state-dir>/models/` (name = file stem), for splits and standbys."""
        folder = self.config.state_dir / "models"
        return {p.stem: p for p in sorted(folder.glob("*.gguf"))} if folder.is_dir() else {}

    def _record_fields(self) -> dict[str, Any]:
        """What this node advertises; health follows the model servers' live checks."""
        models = tuple(
            ModelAd(
                name,
                server.ready,
                "host",
                in_flight=self.in_flight[name],
                layers=self._host_layers(name),
                free_slots=server.free_slots,
            )
            for name, server in sorted(self.servers.items())
        ) + tuple(self.split.worker_ads())
        picking_up = self.standby.state.model
        if picking_up is not None and picking_up not in self.servers:
            # Resolving (perhaps assembling or downloading) before its server starts: say so, or
            # the mesh would see the model unserved and this node no longer a standby.
            models += (ModelAd(picking_up, False, "host"),)
        return {
            "role": self.role,
            "capacity_bytes": self.capacity.offered_bytes,
            "models": models,
            "on_disk": tuple(sorted(set(self.on_disk) | set(self.resolved))),
            "api_port": self.api_port or 0,
            "console_port": self.console_port or 0,
            "demand": self.demand.own_counters(),
            "client": self.config.client,
            "extra": intents_record(self.split.claims(), self.split.wants, self.declined),
        }

    def _host_layers(self, model: str) -> tuple[int, int] | None:
        return self.split.host_layers(model)

    def _changed(self) -> None:
        self.feed.bump()
        if self.mesh is not None:
            self.mesh.advertise(**self._record_fields())
