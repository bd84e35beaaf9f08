"""Split inference across the mesh: who coordinates a model, the host's work and the workers' duties.

A node asked to serve a model that does not fit it (or with `--split`) *wants* it and says so in
its gossip record (`extra["wants"]`). Every node computes the same coordinator for each wanted
model (`planner.elect_host`): a host already placing it keeps it, else the node with the GGUF
and the most capacity. Nodes remember the split models they have seen for ten minutes, so when a
host dies or drops one, the node with the next-most capacity takes it over.

The coordinator plans with the pure planner (itself as host, workers among peers with the GGUF on
disk within the RTT cap), publishes its claim and plan in its gossip record (`extra["splits"]`), waits until
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_llm.config import BackendConfig
from mesh_llm.errors import MeshError, ModelError
from mesh_llm.mesh.gossip import ModelAd
from mesh_llm.mesh.service import RPC_STREAM
from mesh_llm.mesh.tunnel import TcpTunnel, open_tcp_tunnel
from mesh_llm.models.catalog import find_entry
from mesh_llm.models.kv import kv_cache_bytes
from mesh_llm.models.resolve import ResolvedModel, resolve
from mesh_llm.planning.election import HostClaim, elect_host
from mesh_llm.planning.planner import PlanConfig, replan
from mesh_llm.planning.plans import ModelFacts, PlanNode, Solo, Split, Waiting
from mesh_llm.planning.records import PeerClaim, model_dir_name, peer_claims, peer_declined, peer_wants
from mesh_llm.serving.backend import ModelServer
from mesh_llm.serving.rpc_cache import clear_rpc_cache, gguf_header, prefill_rpc_cache
from mesh_llm.serving.rpc_supervisor import RpcWorker, RpcWorkerState
from mesh_llm.states import (
    Loading,
    NoLinkToWorker,
    Planning,
    Serving,
    SplitFailed,
    SplitHostState,
    WaitingForCapacity,
    WaitingForWorkers,
    log_transition,
)

if TYPE_CHECKING:
    from mesh_llm.node import Node

log = logging.getLogger(__name__)

FIT_FACTOR = 1.1
MAX_DUTIES = 4  # split models one node holds layers for at once: bounds what members can ask of it
REMEMBER_S = 600.0  # a split model seen this recently is taken over when its host is gone
JOIN_GRACE_S = 3.0  # a node coordinates nothing until gossip has shown it the whole mesh


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
    plan: Solo | Split | Waiting | None = None
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

    def published(self) -> dict[str, Any]:
        """This host's claim and plan as gossiped: workers act on `shards`, everyone on the rest."""
        plan = self.plan
        shards = (
            [[s.node_id, s.start_layer, s.end_layer] for s in plan.shards] if isinstance(plan, Split) else []
        )
        return {
            "epoch": self.epoch,
            "mode": _mode(plan),
            "settled": self.settled,
            "state": self.state.text,
            "force": self.force,
            "n_layers": self.facts.n_layers,
            "shards": shards,
        }


@dataclass
class _Known:
    """A split model seen wanted or claimed in the mesh."""

    force: bool
    epoch: int
    seen: float  # time.monotonic()


_refused: set[tuple[str, str]] = set()


def _warn_refused(peer_id: str, model: str, why: str) -> None:
    if (peer_id, model) not in _refused:  # reconcile runs every second: say it once
        _refused.add((peer_id, model))
        log.warning("ignoring %s's split plan for %s: %s", peer_id[:8], model, why)


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
        self.wants: dict[str, bool] = {}  # models asked of this node that need the mesh -> forced
        self.known: dict[str, _Known] = {}
        self._started = time.monotonic()
        self._busy = asyncio.Lock()

    # ---- coordinator ---------------------------------------------------------------------

    def wants_split(self, model: ResolvedModel) -> bool:
        cfg = self.node.config
        return cfg.split or serving_bytes(model, cfg.backend) * FIT_FACTOR > self.node.capacity.offered_bytes

    def want(self, model: ResolvedModel) -> None:
        """This node was asked to serve `model`, which needs the mesh: elect its host next reconcile."""
        self.wants[model.name] = self.node.config.split
        self.node.declined.discard(model.name)

    def wants_record(self) -> dict[str, Any]:
        return {name: {"force": force} for name, force in sorted(self.wants.items())}

    # ---- who coordinates -----------------------------------------------------------------

    async def _elect(self) -> None:
        """Take over the split models this node should coordinate; hand back the ones it should not."""
        node = self.node
        now = time.monotonic()
        peers = node.mesh.peers() if node.mesh is not None else {}
        claims = self._host_claims()
        for name, host in self.hosts.items():
            self._remember(name, host.force, host.epoch, now)
        for name, force in self.wants.items():
            self._remember(name, force, 0, now)
        for name, peer_claims_of_model in self._peer_claims().items():
            for _, claim in peer_claims_of_model:
                self._remember(name, claim.force, claim.epoch, now)
        for view in peers.values():
            for name, force in peer_wants(view.record.extra).items():
                self._remember(name, force, 0, now)
        for name, known in list(self.known.items()):
            if now - known.seen > REMEMBER_S:
                del self.known[name]
                continue
            elected = elect_host(self._election_nodes(name), claims.get(name, []))
            if elected == node.node_id and name not in self.hosts and now - self._started >= JOIN_GRACE_S:
                await self._take(name, known)
            elif elected not in (None, node.node_id) and name in self.hosts:
                assert elected is not None
                log.info("handing %s to %s, which the mesh elects to coordinate it", name, elected[:8])
                await self._stop_host(self.hosts.pop(name))
                node._changed()

    def _host_claims(self) -> dict[str, list[HostClaim]]:
        """Who claims to coordinate each model, this node included: the election's input."""
        claims: dict[str, list[HostClaim]] = {}
        for name, host in self.hosts.items():
            claims.setdefault(name, []).append(HostClaim(self.node.node_id, host.settled))
        for name, peer_claims_of_model in self._peer_claims().items():
            for peer_id, claim in peer_claims_of_model:
                claims.setdefault(name, []).append(HostClaim(peer_id, claim.settled))
        return claims

    def _peer_claims(self) -> dict[str, list[tuple[str, PeerClaim]]]:
        """Every peer's published claims, by model."""
        out: dict[str, list[tuple[str, PeerClaim]]] = {}
        if self.node.mesh is not None:
            for peer_id, view in self.node.mesh.peers().items():
                for name, claim in peer_claims(view.record.extra).items():
                    out.setdefault(name, []).append((peer_id, claim))
        return out

    def _remember(self, name: str, force: bool, epoch: int, now: float) -> None:
        known = self.known.get(name)
        if known is None:
            self.known[name] = _Known(force, epoch, now)
        else:
            known.force, known.epoch, known.seen = force, max(known.epoch, epoch), now

    def _election_nodes(self, model: str) -> list[PlanNode]:
        node = self.node
        mine = model in node.on_disk or model in node.resolved or model in node.local_files()
        nodes = [
            PlanNode(
                node.node_id,
                node.capacity.offered_bytes,
                None,
                mine and model not in node.declined,
                node.config.client,
            )
        ]
        if node.mesh is not None:
            for peer_id, view in node.mesh.peers().items():
                rec = view.record
                has = model in rec.on_disk and model not in peer_declined(rec.extra)
                nodes.append(PlanNode(peer_id, rec.capacity_bytes, None, has, rec.client))
        return nodes

    async def _take(self, name: str, known: _Known) -> None:
        """Become the coordinator of `name` from this node's own copy of the GGUF."""
        node = self.node
        try:
            model = await self._own_copy(name)
        except MeshError as exc:
            log.warning("cannot take over %s: %s", name, exc)
            return
        node.resolved[name] = model
        host = SplitHost(
            model, await asyncio.to_thread(model_facts, model, node.config.backend), force=known.force
        )
        host.epoch = known.epoch  # the first plan here comes after the last one seen anywhere
        self.hosts[name] = host
        verb = "coordinates" if name in self.wants else "takes over"
        log.info("this node %s %s (the mesh's choice of host)", verb, name)
        node._changed()

    async def _own_copy(self, name: str) -> ResolvedModel:
        """This node's own GGUF of `name`: asked for here, in `<state-dir>/models/`, or in the catalog.

        Never downloads; raises MeshError when there is no copy.
        """
        model = self.node.resolved.get(name)
        if model is not None:
            return model
        path = self.node.local_files().get(name)
        if path is None and find_entry(name) is None:
            # `name` may come from a peer's gossip: resolve it only as a file in our models
            # folder or a catalog name, never as a path of its own.
            raise ModelError(
                f"{name} is neither in {self.node.config.state_dir / 'models'} nor in the catalog"
            )
        spec = str(path) if path else name
        return await asyncio.to_thread(resolve, spec, allow_download=False, progress=False)

    def _plan_nodes(self, model: str) -> list[PlanNode]:
        node = self.node
        nodes = [PlanNode(node.node_id, node.capacity.offered_bytes, None, True, False)]
        if node.mesh is not None:
            for peer_id, view in node.mesh.peers().items():
                rec = view.record
                rtt = node.mesh.rtt_min_ms(peer_id)  # a stalled second must not drop a worker
                if rec.client or rtt is None or not view.connected:
                    continue
                has = model in rec.on_disk and model not in peer_declined(rec.extra)
                nodes.append(PlanNode(peer_id, rec.capacity_bytes, rtt, has, False))
        return nodes

    def preview(self, spec: str) -> dict[str, Any]:
        """The plan the mesh would choose for `spec` right now (or the one a host already runs).

        The host is the one `elect_host` names; RTTs are this node's own, so a preview asked on
        another node than that host is an estimate where links differ.
        """
        from mesh_llm.planning.planner import plan_model
        from mesh_llm.planning.plans import describe_plan

        model = resolve(spec, allow_download=False, progress=False)
        facts = model_facts(model, self.node.config.backend)
        force = self.wants.get(model.name, self.node.config.split)
        current = self.hosts.get(model.name)
        plan: Solo | Split | Waiting | None = current.plan if current is not None else None
        if plan is None:
            nodes = self._plan_nodes(model.name)
            claims = [HostClaim(p, c.settled) for p, c in self._peer_claims().get(model.name, [])]
            host = elect_host(self._election_nodes(model.name), claims) or self.node.node_id
            if host != self.node.node_id and self.node.mesh is not None:
                # RTTs are measured from the host: ours to it stands in for theirs to us.
                to_host = self.node.mesh.rtt_min_ms(host)
                nodes = [
                    replace(n, rtt_ms=None if n.node_id == host else n.rtt_ms)
                    if n.node_id != self.node.node_id
                    else replace(n, rtt_ms=to_host)
                    for n in nodes
                ]
            plan = plan_model(nodes, facts, PlanConfig(force_split=force, pinned_host=host))
        return {
            "model": model.name,
            "size_bytes": model.size_bytes,
            "n_layers": facts.n_layers,
            "mode": _mode(plan),
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
        return {name: h.published() for name, h in sorted(self.hosts.items())}

    async def reconcile(self) -> None:
        if self._busy.locked():
            return
        async with self._busy:
            await self._elect()
            for host in list(self.hosts.values()):
                try:
                    await self._reconcile_host(host)
                except MeshError as exc:
                    host.set_state(SplitFailed(str(exc)))
                    log.warning("split of %s: %s", host.model.name, exc)
            await self._reconcile_duties()

    async def _reconcile_host(self, host: SplitHost) -> None:
        node = self.node
        name = host.model.name
        cfg = PlanConfig(force_split=host.force, pinned_host=node.node_id)
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
            host.set_state(WaitingForCapacity(plan.reason))
            return
        if host.server is not None:
            host.set_state(Serving() if host.server.ready else Loading())
            return
        if isinstance(plan, Solo):
            host.set_state(Loading())
            await self._start_server(host, [], [])
            return
        # Wait for every worker of this epoch to advertise its RPC worker ready.
        missing = [
            s.node_id[:8] for s in plan.shards[1:] if not self._worker_ready(s.node_id, name, host.epoch)
        ]
        if missing:
            host.set_state(WaitingForWorkers(tuple(missing)))
            return
        assert node.mesh is not None
        tunnels: list[TcpTunnel] = []
        for shard in plan.shards[1:]:
            link = node.mesh.transport.link(shard.node_id)
            if link is None:
                host.set_state(NoLinkToWorker(shard.node_id[:8]))
                for t in tunnels:
                    await t.close()
                return
            tunnels.append(await open_tcp_tunnel(link, RPC_STREAM, {"model": name, "epoch": host.epoch}))
        host.tunnels = tunnels
        host.set_state(Loading())
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
            gpus=[(d.name, d.free_bytes) for d in node.capacity.devices],
        )
        host.server = server
        host.settled = True
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
        claims = self._host_claims()
        for peer_id, view in node.mesh.peers().items():
            for model, claim in peer_claims(view.record.extra, peer_id).items():
                mine = [
                    (start, end) for shard_node, start, end in claim.shards[1:] if shard_node == node.node_id
                ]
                if not mine:
                    continue
                # Only the host this node's own election picks may put it to work: any other
                # member could otherwise make it start RPC workers (and spend memory) at will.
                if elect_host(self._election_nodes(model), claims.get(model, [])) != peer_id:
                    _warn_refused(peer_id, model, "this node elects another host for it")
                    continue
                if model not in wanted and len(wanted) >= MAX_DUTIES:
                    _warn_refused(peer_id, model, f"this node already holds layers for {MAX_DUTIES} models")
                    continue
                wanted[model] = (peer_id, claim.epoch, mine[0])
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
        # Named by a hash: a model name comes from a peer's gossip and never becomes a path.
        cache_dir = node.config.state_dir / "rpc-cache" / model_dir_name(model)
        shutil.rmtree(cache_dir, ignore_errors=True)
        files: list[Path] = []
        try:
            path = (await self._own_copy(model)).path
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
            device=node.capacity.gpu_names[0] if node.capacity.gpu_names else "cpu",
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
        """Stop hosting a split model (the node has declined it, so it is not elected again).

        Its workers see the plan vanish and stop; the node with the next-most capacity takes over.
        """
        async with self._busy:
            self.wants.pop(model, None)
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
                "mode": _mode(plan),
                "split_state": host.state.text,
                "epoch": host.epoch,
                "shards": shards,
                "n_layers": host.facts.n_layers,
                "load_s": round(host.load_s, 2) if host.load_s is not None else None,
            }
        return rows


def _mode(plan: Solo | Split | Waiting | None) -> str:
    if isinstance(plan, Split):
        return "split"
    return "solo" if isinstance(plan, Solo) else "waiting"


def _describe(plan: Solo | Split | Waiting) -> str:
    if isinstance(plan, Split):
        return ", ".join(f"{s.node_id[:8]} layers {s.start_layer}-{s.end_layer - 1}" for s in plan.shards)
    if isinstance(plan, Solo):
        return f"solo on {plan.host[:8]}"
    return f"waiting ({plan.reason})"
