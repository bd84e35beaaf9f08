"""Split inference across the mesh: the host's coordinator and the workers' duties.

The node asked to serve a model that does not fit it (or with `--split`) coordinates that
model: it plans with the pure planner (itself as host, workers among peers with the GGUF on disk
within the RTT cap), publishes the plan in its gossip record (`extra["splits"]`), waits until
every worker advertises its RPC worker ready, bridges a local TCP port to each worker over an
authenticated QUIC stream, and starts its model server with those ports as RPC devices holding
exactly the planned layer ranges. Workers read plans from peers' records, run an RPC worker
bound to 127.0.0.1 (reachable only through the mesh tunnel), pre-fill its tensor cache from
their own copy of the GGUF so weights need not cross the network, and advertise themselves.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_llm.errors import MeshError
from mesh_llm.mesh.gossip import ModelAd
from mesh_llm.mesh.service import RPC_STREAM
from mesh_llm.mesh.tunnel import TcpTunnel, open_tcp_tunnel
from mesh_llm.models.resolve import ResolvedModel, resolve
from mesh_llm.planning.planner import ModelFacts, PlanConfig, PlanNode, Solo, Split, Waiting, replan
from mesh_llm.serving.backend import ModelServer
from mesh_llm.serving.rpc import RpcWorker, RpcWorkerState, clear_rpc_cache, gguf_tensors, prefill_rpc_cache

if TYPE_CHECKING:
    from mesh_llm.node import Node

log = logging.getLogger(__name__)

FIT_FACTOR = 1.1


def model_facts(model: ResolvedModel) -> ModelFacts:
    """Size and layer count from the GGUF header (fast: no metadata arrays are parsed)."""
    blocks = {int(e.tensor.split(".")[1]) for e in gguf_tensors(model.path) if e.tensor.startswith("blk.")}
    return ModelFacts(model.name, model.size_bytes, max(blocks) + 1 if blocks else 1)


@dataclass
class SplitHost:
    """The coordinator's state for one model it hosts as a split."""

    model: ResolvedModel
    facts: ModelFacts
    plan: Solo | Split | Waiting | None = None
    epoch: int = 0
    server: ModelServer | None = None
    tunnels: list[TcpTunnel] = field(default_factory=list)
    state: str = "planning"
    planned_at: float = 0.0  # wall clock, comparable with ModelServer.status().since

    @property
    def load_s(self) -> float | None:
        """Seconds from this epoch's plan to a ready model server (workers' start included)."""
        if self.server is None or not self.server.ready:
            return None
        return max(0.0, self.server.status().since - self.planned_at)

    def published(self) -> dict[str, Any] | None:
        if not isinstance(self.plan, Split):
            return None
        shards = [[s.node_id, s.start_layer, s.end_layer] for s in self.plan.shards]
        return {
            "epoch": self.epoch,
            "host": self.plan.host,
            "n_layers": self.facts.n_layers,
            "shards": shards,
        }


@dataclass
class WorkerDuty:
    """This node's part of someone else's split: an RPC worker holding a layer range."""

    model: str
    host: str
    epoch: int
    layers: tuple[int, int]
    worker: RpcWorker
    cache_files: list[Path] = field(default_factory=list)


class SplitManager:
    """Runs on the node's loop; `reconcile()` is called every second and on changes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.hosts: dict[str, SplitHost] = {}
        self.duties: dict[str, WorkerDuty] = {}
        self._busy = asyncio.Lock()

    # ---- coordinator ---------------------------------------------------------------------

    def wants_split(self, model: ResolvedModel) -> bool:
        cfg = self.node.config
        return cfg.split or model.size_bytes * FIT_FACTOR > self.node.capacity.offered_bytes

    def adopt(self, model: ResolvedModel) -> None:
        self.hosts[model.name] = SplitHost(model, model_facts(model))

    def _plan_nodes(self, model: str) -> list[PlanNode]:
        node = self.node
        nodes = [PlanNode(node.node_id, node.capacity.offered_bytes, None, True, False)]
        if node.mesh is not None:
            for peer_id, view in node.mesh.peers().items():
                rec = view.record
                rtt = node.mesh.rtt_ms(peer_id)
                if rec.client or rtt is None or not view.connected:
                    continue
                nodes.append(PlanNode(peer_id, rec.capacity_bytes, rtt, model in rec.on_disk, False))
        return nodes

    def preview(self, spec: str) -> dict[str, Any]:
        """The plan the mesh would choose for `spec` right now, with this node as host."""
        from mesh_llm.planning.planner import describe_plan, plan_model

        model = resolve(spec, allow_download=False, progress=False)
        facts = model_facts(model)
        cfg = PlanConfig(force_split=self.node.config.split, pinned_host=self.node.node_id)
        plan = plan_model(self._plan_nodes(model.name), facts, cfg)
        return {
            "model": model.name,
            "size_bytes": model.size_bytes,
            "n_layers": facts.n_layers,
            "mode": "split"
            if isinstance(plan, Split)
            else ("waiting" if isinstance(plan, Waiting) else "solo"),
            "reason": plan.reason if isinstance(plan, Waiting) else None,
            "rows": [
                {
                    "node_id": r.node_id,
                    "role": r.role,
                    "start_layer": r.start_layer,
                    "end_layer": r.end_layer,
                    "bytes": r.bytes_estimate,
                }
                for r in describe_plan(plan)
            ],
        }

    def splits_record(self) -> dict[str, Any]:
        return {name: pub for name, h in self.hosts.items() if (pub := h.published()) is not None}

    async def reconcile(self) -> None:
        if self._busy.locked():
            return
        async with self._busy:
            for host in list(self.hosts.values()):
                try:
                    await self._reconcile_host(host)
                except MeshError as exc:
                    host.state = f"failed: {exc}"
                    log.warning("split of %s: %s", host.model.name, exc)
            await self._reconcile_duties()

    async def _reconcile_host(self, host: SplitHost) -> None:
        node = self.node
        name = host.model.name
        cfg = PlanConfig(force_split=node.config.split, pinned_host=node.node_id)
        failed = host.server is not None and host.server.status().restarts > 0
        previous = None if failed else host.plan
        plan = replan(previous, self._plan_nodes(name), host.facts, cfg)
        if plan is not host.plan or failed:
            if failed:
                log.warning("split host for %s lost a worker: re-planning", name)
            await self._stop_host(host)
            host.plan = plan
            host.epoch += 1
            host.planned_at = time.time()
            log.info("plan for %s (epoch %d): %s", name, host.epoch, _describe(plan))
            node._changed()
        if isinstance(plan, Waiting):
            host.state = f"waiting for capacity: {plan.reason}"
            return
        if host.server is not None:
            host.state = "serving" if host.server.ready else "loading"
            return
        if isinstance(plan, Solo):
            host.state = "loading"
            await self._start_server(host, [], [])
            return
        # Wait for every worker of this epoch to advertise its RPC worker ready.
        missing = [
            s.node_id[:8] for s in plan.shards[1:] if not self._worker_ready(s.node_id, name, host.epoch)
        ]
        if missing:
            host.state = f"waiting for workers {', '.join(missing)}"
            return
        assert node.mesh is not None
        tunnels: list[TcpTunnel] = []
        for shard in plan.shards[1:]:
            link = node.mesh.transport.link(shard.node_id)
            if link is None:
                host.state = f"no link to worker {shard.node_id[:8]}"
                for t in tunnels:
                    await t.close()
                return
            tunnels.append(await open_tcp_tunnel(link, RPC_STREAM, {"model": name, "epoch": host.epoch}))
        host.tunnels = tunnels
        host.state = "loading"
        counts = [s.end_layer - s.start_layer for s in plan.shards]
        await self._start_server(host, [f"127.0.0.1:{t.port}" for t in tunnels], counts)

    def _worker_ready(self, node_id: str, model: str, epoch: int) -> bool:
        assert self.node.mesh is not None
        view = self.node.mesh.peers().get(node_id)
        if view is None:
            return False
        return any(
            ad.name == model and ad.role == "worker" and ad.ready and ad.extra.get("epoch") == epoch
            and ad.extra.get("host") == self.node.node_id
            for ad in view.record.models
        )  # fmt: skip

    async def _start_server(self, host: SplitHost, endpoints: list[str], counts: list[int]) -> None:
        node = self.node
        server = ModelServer(
            host.model,
            node.config.backend,
            node.config.state_dir / "logs",
            on_change=node._changed,
            rpc_endpoints=endpoints,
            layer_split=counts,
        )
        host.server = server
        node.servers[host.model.name] = server
        await server.start()

    async def _stop_host(self, host: SplitHost) -> None:
        if host.server is not None:
            self.node.servers.pop(host.model.name, None)
            await host.server.stop()
            host.server = None
        for t in host.tunnels:
            await t.close()
        host.tunnels = []

    # ---- worker --------------------------------------------------------------------------

    def _wanted_duties(self) -> dict[str, tuple[str, int, tuple[int, int]]]:
        node = self.node
        wanted: dict[str, tuple[str, int, tuple[int, int]]] = {}
        if node.mesh is None or node.config.client:
            return wanted
        for peer_id, view in node.mesh.peers().items():
            splits = view.record.extra.get("splits")
            if not isinstance(splits, dict):
                continue
            for model, plan in splits.items():
                try:
                    for shard_node, start, end in plan["shards"][1:]:
                        if shard_node == node.node_id:
                            wanted[model] = (peer_id, int(plan["epoch"]), (int(start), int(end)))
                except (KeyError, TypeError, ValueError):
                    log.warning("ignoring a malformed split plan for %s from %s", model, peer_id[:8])
        return wanted

    async def _reconcile_duties(self) -> None:
        wanted = self._wanted_duties()
        for model, duty in list(self.duties.items()):
            if wanted.get(model) != (duty.host, duty.epoch, duty.layers):
                await self._stop_duty(duty)
                del self.duties[model]
                self.node._changed()
        for model, (host, epoch, layers) in wanted.items():
            if model not in self.duties:
                await self._start_duty(model, host, epoch, layers)

    async def _start_duty(self, model: str, host: str, epoch: int, layers: tuple[int, int]) -> None:
        node = self.node
        cache_dir = node.config.state_dir / "rpc-cache" / model
        shutil.rmtree(cache_dir, ignore_errors=True)
        files: list[Path] = []
        try:
            path = node.local_files().get(model)
            if path is None:
                path = (await asyncio.to_thread(resolve, model, allow_download=False, progress=False)).path
            files = await asyncio.to_thread(prefill_rpc_cache, path, layers, cache_dir)
        except MeshError as exc:
            log.info(
                "no local copy of %s to pre-fill the RPC cache (%s): weights will cross the network",
                model,
                exc,
            )
            cache_dir = None  # type: ignore[assignment]  # a cache dir without prefill would only fill the disk
        worker = RpcWorker(
            cache_dir=cache_dir,
            log_dir=node.config.state_dir / "logs",
            name=f"rpc-{model}",
            n_threads=node.config.backend.n_threads,
            on_change=node._changed,
        )
        duty = WorkerDuty(model, host, epoch, layers, worker, files)
        self.duties[model] = duty
        log.info(
            "worker for %s layers %d-%d of host %s (epoch %d)", model, layers[0], layers[1], host[:8], epoch
        )
        try:
            await worker.start()
        except MeshError as exc:
            log.error("RPC worker for %s failed to start: %s", model, exc)
        node._changed()

    async def _stop_duty(self, duty: WorkerDuty) -> None:
        await duty.worker.stop()
        if duty.worker.cache_dir is not None:
            clear_rpc_cache(duty.worker.cache_dir)

    def rpc_port(self, peer_id: str, model: str, header_epoch: object) -> int | None:
        """Where a host's RPC tunnel lands: our worker for that host, model and epoch, else refuse."""
        duty = self.duties.get(model)
        if duty is None or duty.host != peer_id or duty.epoch != header_epoch:
            return None
        if duty.worker.state is not RpcWorkerState.READY:
            return None
        return duty.worker.port

    def worker_ads(self) -> list[ModelAd]:
        return [
            ModelAd(
                d.model,
                d.worker.state is RpcWorkerState.READY,
                "worker",
                layers=d.layers,
                extra={"epoch": d.epoch, "host": d.host},
            )
            for d in sorted(self.duties.values(), key=lambda d: d.model)
        ]

    async def drop(self, model: str) -> None:
        """Stop hosting a split model; its workers see the plan vanish and stop too."""
        async with self._busy:
            host = self.hosts.pop(model, None)
            if host is not None:
                await self._stop_host(host)

    async def stop(self) -> None:
        for host in self.hosts.values():
            await self._stop_host(host)
        for duty in self.duties.values():
            await self._stop_duty(duty)
        self.duties.clear()

    # ---- status --------------------------------------------------------------------------

    def host_rows(self) -> dict[str, dict[str, Any]]:
        rows = {}
        for name, host in self.hosts.items():
            plan = host.plan
            shards = []
            if isinstance(plan, Split):
                for i, s in enumerate(plan.shards):
                    tunnel = host.tunnels[i - 1] if i and i - 1 < len(host.tunnels) else None
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
            rows[name] = {
                "mode": "split"
                if isinstance(plan, Split)
                else ("waiting" if isinstance(plan, Waiting) else "solo"),
                "split_state": host.state,
                "epoch": host.epoch,
                "shards": shards,
                "n_layers": host.facts.n_layers,
                "load_s": round(host.load_s, 2) if host.load_s is not None else None,
            }
        return rows


def _describe(plan: Solo | Split | Waiting) -> str:
    if isinstance(plan, Split):
        return ", ".join(f"{s.node_id[:8]} layers {s.start_layer}-{s.end_layer - 1}" for s in plan.shards)
    if isinstance(plan, Solo):
        return f"solo on {plan.host[:8]}"
    return f"waiting ({plan.reason})"
