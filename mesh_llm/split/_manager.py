"""Split inference across the mesh: who coordinates a model, the host's work and the workers' duties.

A node asked to serve a model that does not fit it (or with `--split`) *wants* it and says so in
its gossip record (`extra["wants"]`). Every node computes the same coordinator for each wanted
model (`split.host_election.elect_host`): a host already placing it keeps it, else the node with the GGUF
and the most capacity. Nodes remember the split models they have seen for ten minutes, so when a
host dies or drops one, the node with the next-most capacity takes it over.

The coordinator plans with the pure planner (itself as host, workers among peers with the GGUF on
disk within the RTT cap), publishes its claim and plan in its gossip record (`extra["splits"]`), waits until
every worker advertises its RPC worker ready, bridges a local TCP port to each worker over an
authenticated QUIC stream, and starts its model server with those ports as RPC devices holding
exactly the planned layer ranges. Workers read plans from peers' records, run an RPC worker
bound to 127.0.0.1 (reachable only through the mesh tunnel), pre-fill its tensor cache from
their own copy of the GGUF so weights need not cross the network, and advertise themselves.

Each reconcile takes one frozen `MeshView` from the node's `SplitContext`, asks the pure
functions of `_election.py` and `_decisions.py` what to do, and carries it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mesh_llm.config import BackendConfig, SplitConfig
from mesh_llm.errors import MeshError, ModelError
from mesh_llm.log_limits import WarnOnce
from mesh_llm.mesh.gossip import ModelAd, PeerView
from mesh_llm.models.catalog import find_entry
from mesh_llm.models.resolve import ResolvedModel, resolve
from mesh_llm.planning.planner import PlanConfig
from mesh_llm.planning.plans import Split
from mesh_llm.split._context import Holdings, SplitContext
from mesh_llm.split._decisions import decide_host
from mesh_llm.split._election import Known, Member, MeshView, OwnHost, elect, wanted_duties
from mesh_llm.split._election import duty_changes as _duty_changes
from mesh_llm.split._host import HostExecutor, SplitHost, model_facts, serving_bytes
from mesh_llm.split._preview import preview_plan
from mesh_llm.split._worker import WorkerDuty, WorkerExecutor, rpc_port
from mesh_llm.split.claims import PeerClaim, read_intents
from mesh_llm.split.states import SplitFailed
from mesh_llm.supervise import all_logged

log = logging.getLogger(__name__)


def member(peer_id: str, view: PeerView, rtt_min_ms: float | None, notices: WarnOnce | None = None) -> Member:
    """A peer's gossip record as the split election reads it (its split fields parsed strictly;
    malformed claims are reported once to `notices`)."""
    rec = view.record
    intents = read_intents(rec.extra, peer_id, notices)
    ready = frozenset(
        (ad.name, host, epoch)
        for ad in rec.models
        if ad.role == "worker" and ad.ready
        and isinstance(host := ad.extra.get("host"), str) and isinstance(epoch := ad.extra.get("epoch"), int)
    )  # fmt: skip
    return Member(
        peer_id, rec.capacity_bytes, frozenset(rec.on_disk), rec.client, intents.claims, intents.wants,
        intents.declined, view.connected, rtt_min_ms, ready,
    )  # fmt: skip


class SplitManager:
    """Runs on the node's loop; `reconcile()` is called every second and on changes."""

    def __init__(
        self,
        ctx: SplitContext,
        config: SplitConfig,
        *,
        planner: PlanConfig,
        backend: BackendConfig,
        state_dir: Path,
        client: bool,
    ) -> None:
        self._ctx = ctx
        self._config = config
        self._planner = planner
        self._backend = backend
        self._state_dir = state_dir
        self._client = client
        self.hosts: dict[str, SplitHost] = {}
        self.duties: dict[str, WorkerDuty] = {}
        self.wants: dict[str, bool] = {}  # models asked of this node that need the mesh -> forced
        self.known: dict[str, Known] = {}
        self._started = time.monotonic()
        self._busy = asyncio.Lock()
        self._host = HostExecutor(ctx, backend, state_dir / "logs")
        self._worker = WorkerExecutor(ctx, state_dir, backend.n_threads, self._own_copy)
        # Reconcile reads every record every second: each bad claim or refused plan is said once,
        # and the memory of what was said is bounded, whatever names members send.
        self._bad_claims = WarnOnce(log, "malformed split claims")
        self._refusals = WarnOnce(log, "refused split plans")

    # ---- what the node asks --------------------------------------------------------------

    def wants_split(self, model: ResolvedModel) -> bool:
        """Whether `model` needs the mesh: `--split`, or it does not fit this node with headroom."""
        need = serving_bytes(model, self._backend) * self._planner.fit_factor
        return self._config.force or need > self._ctx.capacity.offered_bytes

    def want(self, model: ResolvedModel) -> None:
        """This node was asked to serve `model`, which needs the mesh: elect its host next reconcile."""
        self.wants[model.name] = self._config.force

    def view(self, holdings: Holdings | None = None) -> MeshView:
        """This node and its peers as the election sees them, at this instant."""
        ctx = self._ctx
        held = ctx.holdings() if holdings is None else holdings
        return MeshView(
            me=ctx.node_id,
            capacity_bytes=ctx.capacity.offered_bytes,
            client=self._client,
            copies=held.copies,
            declined=held.declined,
            hosts={n: OwnHost(h.force, h.epoch, h.settled) for n, h in self.hosts.items()},
            wants=dict(self.wants),
            peers={p: member(p, v, ctx.rtt_min_ms(p), self._bad_claims) for p, v in ctx.mesh_peers().items()},
        )

    def claims(self) -> list[PeerClaim]:
        """This node's published claims (one per split model it hosts)."""
        return [h.claim() for _, h in sorted(self.hosts.items())]

    async def reconcile(self) -> None:
        """Elect, then move every hosted model and every duty one step towards its plan."""
        if self._busy.locked():
            return
        async with self._busy:
            await self._elect()
            view = self.view()
            for host in list(self.hosts.values()):
                try:
                    await self._host.apply(host, decide_host(host.situation(), view, self._planner))
                except MeshError as exc:
                    host.set_state(SplitFailed(str(exc)))
                    log.warning("split of %s: %s", host.model.name, exc)
            await self._reconcile_duties(self.view())  # after the hosts' moves: settled may have changed

    # ---- who coordinates -----------------------------------------------------------------

    async def _elect(self) -> None:
        """Take over the split models this node should coordinate; hand back the ones it should not."""
        now = time.monotonic()
        cfg = self._config
        election = elect(
            self.view(), self.known, now,
            remember_s=cfg.remember_s, may_take=now - self._started >= cfg.join_grace_s,
        )  # fmt: skip
        self.known = election.known
        for name, known in election.take:
            await self._take(name, known)
        for name, winner in election.hand_back:
            log.info("handing %s to %s, which the mesh elects to coordinate it", name, winner[:8])
            await self._host.stop(self.hosts.pop(name))
            self._ctx.split_changed()

    async def _take(self, name: str, known: Known) -> None:
        """Become the coordinator of `name` from this node's own copy of the GGUF."""
        try:
            model = await self._own_copy(name)
        except MeshError as exc:
            log.warning("cannot take over %s: %s", name, exc)
            return
        self._ctx.add_resolved(model)
        host = SplitHost(model, await asyncio.to_thread(model_facts, model, self._backend), force=known.force)
        host.epoch = known.epoch  # the first plan here comes after the last one seen anywhere
        self.hosts[name] = host
        verb = "coordinates" if name in self.wants else "takes over"
        log.info("this node %s %s (the mesh's choice of host)", verb, name)
        self._ctx.split_changed()

    async def _own_copy(self, name: str) -> ResolvedModel:
        """This node's own GGUF of `name`: asked for here, in `<state-dir>/models/`, or in the catalog.

        Never downloads; raises MeshError when there is no copy.
        """
        held = self._ctx.holdings()
        model = held.resolved.get(name)
        if model is not None:
            return model
        path = held.local_files.get(name)
        if path is None and find_entry(name) is None:
            # `name` may come from a peer's gossip: resolve it only as a file in our models
            # folder or a catalog name, never as a path of its own.
            raise ModelError(f"{name} is neither in {self._state_dir / 'models'} nor in the catalog")
        spec = str(path) if path else name
        return await asyncio.to_thread(resolve, spec, allow_download=False, progress=False)

    def preview(self, spec: str) -> dict[str, Any]:
        """The plan the mesh would choose for `spec` right now (or the one a host already runs)."""
        model = resolve(spec, allow_download=False, progress=False)
        facts = model_facts(model, self._backend)
        force = self.wants.get(model.name, self._config.force)
        current = self.hosts.get(model.name)
        return preview_plan(
            self.view(), facts, model.size_bytes, current.plan if current is not None else None,
            self._planner, force=force, rtt_to=self._ctx.rtt_min_ms,
        )  # fmt: skip

    # ---- worker --------------------------------------------------------------------------

    async def _reconcile_duties(self, view: MeshView) -> None:
        wanted, refused = wanted_duties(view, self._config.max_duties)
        for r in refused:
            self._refusals.warn(
                (r.peer, r.model), "ignoring %s's split plan for %s: %s", r.peer[:8], r.model, r.why
            )
        stop, start = _duty_changes({m: d.assignment for m, d in self.duties.items()}, wanted)
        for model in stop:
            await self._worker.stop(self.duties.pop(model))
            self._ctx.split_changed()
        for model, assignment in start:
            duty = await self._worker.prepare(model, assignment)
            self.duties[model] = duty
            await self._worker.run(duty)

    def rpc_port(self, peer_id: str, model: str, header_epoch: object) -> int | None:
        """Where a host's RPC tunnel lands: our worker for that host, model and epoch, else refuse."""
        return rpc_port(self.duties.get(model), peer_id, header_epoch)

    def worker_ads(self) -> list[ModelAd]:
        return [d.ad() for d in sorted(self.duties.values(), key=lambda d: d.model)]

    async def drop(self, model: str) -> None:
        """Stop hosting a split model (the node has declined it, so it is not elected again).

        Its workers see the plan vanish and stop; the node with the next-most capacity takes over.
        """
        async with self._busy:
            self.wants.pop(model, None)
            host = self.hosts.pop(model, None)
            if host is not None:
                await self._host.stop(host)

    async def stop(self) -> None:
        """Stop the split hosts, then the worker duties: each set at once, not one after another."""
        await all_logged("a split host", [self._host.stop(host) for host in self.hosts.values()], log)
        await all_logged("an RPC worker", [self._worker.stop(duty) for duty in self.duties.values()], log)
        self.duties.clear()

    # ---- status --------------------------------------------------------------------------

    def host_rows(self) -> dict[str, dict[str, Any]]:
        return {name: host.row() for name, host in self.hosts.items()}

    def host_facts(self, name: str) -> tuple[str, str, int]:
        """A hosted split model's state in words, its GGUF path and its size, for status."""
        host = self.hosts[name]
        return host.state.text, str(host.model.path), host.model.size_bytes

    def host_layers(self, model: str) -> tuple[int, int] | None:
        """The layer range this node holds as ``model``'s split host, if it hosts one."""
        host = self.hosts.get(model)
        if host is None or not isinstance(host.plan, Split):
            return None
        first = host.plan.shards[0]
        return (first.start_layer, first.end_layer)

    def duty_rows(self) -> list[tuple[str, str, int, tuple[int, int], str, int | None, int]]:
        """``(model, host, epoch, layers, worker state, worker port, cache files)`` per duty."""
        return [
            (d.model, d.host, d.epoch, d.layers, d.worker.state.value, d.worker.port, len(d.cache_files))
            for d in self.duties.values()
        ]
