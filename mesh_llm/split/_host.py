"""The coordinator's side of a split: its state per model, and starting and stopping its server.

What to do is decided in `_decisions.py`; this module carries it out (processes, tunnels).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_llm.config import BackendConfig
from mesh_llm.mesh.tunnel import TcpTunnel
from mesh_llm.models.kv import kv_cache_bytes
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.planning.plans import ModelFacts, Split
from mesh_llm.serving.model_server import ModelServer
from mesh_llm.serving.rpc.cache import gguf_header
from mesh_llm.split._context import SplitContext
from mesh_llm.split._decisions import HostSituation, HostStep, Plan, describe, mode
from mesh_llm.split.claims import PeerClaim
from mesh_llm.split.states import NoLinkToWorker, Planning, SplitHostState, log_transition

log = logging.getLogger(__name__)


def model_facts(model: ResolvedModel, backend: BackendConfig) -> ModelFacts:
    """Memory and layer count from the GGUF header (fast: no big metadata arrays are parsed).

    The memory is the weights plus the KV cache of every slot the model server will run,
    which llama.cpp places with the layers it belongs to, so it splits in the same proportion.
    """
    meta, tensors = gguf_header(model.path)
    blocks = {int(e.tensor.split(".")[1]) for e in tensors if e.tensor.startswith("blk.")}
    size = model.size_bytes + kv_cache_bytes(meta, backend.n_ctx, backend.n_parallel)
    return ModelFacts(model.name, size, max(blocks) + 1 if blocks else 1)


def serving_bytes(model: ResolvedModel, backend: BackendConfig) -> int:
    """Memory a model server for `model` takes: weights plus every slot's KV cache."""
    return model_facts(model, backend).size_bytes


@dataclass
class SplitHost:
    """The coordinator's state for one model it hosts as a split."""

    model: ResolvedModel
    facts: ModelFacts
    force: bool = False  # split even if the model fits one node (the asking node's `--split`)
    plan: Plan | None = None
    epoch: int = 0
    server: ModelServer | None = None
    tunnels: list[TcpTunnel] = field(default_factory=list)
    state: SplitHostState = field(default_factory=Planning)
    planned_at: float = 0.0  # wall clock, comparable with ModelServer.status().since
    # A model server has been started here for this model (any epoch): the host has placed it and
    # keeps it through re-plans. One still waiting for capacity or for its first workers has
    # loaded nothing and yields to a better-placed node.
    settled: bool = False

    @property
    def load_s(self) -> float | None:
        """Seconds from this epoch's plan to a ready model server (workers' start included)."""
        if self.server is None or not self.server.ready:
            return None
        return max(0.0, self.server.status().since - self.planned_at)

    def set_state(self, new: SplitHostState) -> None:
        """The one transition of a split host's state, logged old -> new."""
        if new != self.state:
            log_transition(self.model.name, self.state, new)
            self.state = new

    def situation(self) -> HostSituation:
        """This host as `decide_host` sees it."""
        server = self.server
        return HostSituation(
            self.model.name, self.facts, self.force, self.epoch, self.plan,
            has_server=server is not None,
            server_ready=server is not None and server.ready,
            server_restarted=server is not None and server.status().restarts > 0,
        )  # fmt: skip

    def claim(self) -> PeerClaim:
        """This host's claim and plan as gossiped: workers act on `shards`, everyone on the rest."""
        plan = self.plan
        shards = (
            tuple((s.node_id, s.start_layer, s.end_layer) for s in plan.shards)
            if isinstance(plan, Split)
            else ()
        )
        return PeerClaim(
            self.model.name, self.epoch, mode(plan), self.state.text, self.force, self.settled, shards,
            n_layers=self.facts.n_layers,
        )  # fmt: skip

    def published(self) -> dict[str, Any]:
        """The claim as it appears in the gossip record's `extra["splits"]`."""
        return self.claim().to_record()

    def row(self) -> dict[str, Any]:
        """This host's fields in its model's status row."""
        shards = []
        if isinstance(self.plan, Split):
            for i, s in enumerate(self.plan.shards):
                tunnel = self.tunnels[i - 1] if i and i - 1 < len(self.tunnels) else None
                shards.append(
                    {
                        "node_id": s.node_id,
                        "start_layer": s.start_layer,
                        "end_layer": s.end_layer,
                        "bytes": s.bytes_estimate,
                        "bytes_sent": tunnel.counters.bytes_to_peer if tunnel else None,
                        "bytes_received": tunnel.counters.bytes_from_peer if tunnel else None,
                    }
                )
        return {
            "mode": mode(self.plan),
            "split_state": self.state.text,
            "epoch": self.epoch,
            "shards": shards,
            "n_layers": self.facts.n_layers,
            "load_s": round(self.load_s, 2) if self.load_s is not None else None,
        }


class HostExecutor:
    """Carries out a split host's steps: model servers and RPC tunnels, through the node's seam."""

    def __init__(self, ctx: SplitContext, backend: BackendConfig, log_dir: Path) -> None:
        self._ctx = ctx
        self._backend = backend
        self._log_dir = log_dir

    async def apply(self, host: SplitHost, step: HostStep) -> None:
        """Carry out `step` for `host` (re-plan, state, start)."""
        if step.replanned:
            if host.server is not None and host.server.status().restarts > 0:
                log.warning("split host for %s lost a worker: re-planning", host.model.name)
            await self.stop(host)
            host.plan = step.plan
            host.epoch = step.epoch
            host.planned_at = time.time()
            log.info("plan for %s (epoch %d): %s", host.model.name, host.epoch, describe(step.plan))
            self._ctx.split_changed()
        if step.start is None:
            host.set_state(step.state)
            return
        tunnels: list[TcpTunnel] = []
        try:
            for worker in step.start.workers:
                tunnel = await self._ctx.open_rpc_tunnel(worker, host.model.name, host.epoch)
                if tunnel is None:
                    host.set_state(NoLinkToWorker(worker[:8]))
                    break
                tunnels.append(tunnel)
        finally:
            if len(tunnels) < len(step.start.workers):  # gave up, or opening one raised
                for t in tunnels:
                    await t.close()
        if len(tunnels) < len(step.start.workers):
            return
        host.tunnels = tunnels
        host.set_state(step.state)
        await self._start_server(
            host, [f"127.0.0.1:{t.port}" for t in tunnels], list(step.start.layer_counts)
        )

    async def _start_server(self, host: SplitHost, endpoints: list[str], counts: list[int]) -> None:
        ctx = self._ctx
        server = ModelServer(
            host.model,
            self._backend,
            self._log_dir,
            on_change=ctx.split_changed,
            rpc_endpoints=endpoints,
            layer_split=counts,
            gpus=[(d.name, d.free_bytes) for d in ctx.capacity.devices],
        )
        host.server = server
        host.settled = True
        ctx.add_server(server)
        await server.start()

    async def stop(self, host: SplitHost) -> None:
        """Stop the host's model server and close its tunnels (the host itself stays)."""
        if host.server is not None:
            self._ctx.remove_server(host.model.name)
            await host.server.stop()
            host.server = None
        for t in host.tunnels:
            await t.close()
        host.tunnels = []
