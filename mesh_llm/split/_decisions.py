"""What a split host does next for one model, decided from a snapshot (pure).

`decide_host` takes what the host has (its plan, whether its model server runs or restarted)
and what the mesh offers (the members it may place on, the workers ready for it) and returns a
`HostStep`: whether to re-plan (stopping the current server and bumping the epoch), the state
the host is in, and whether to start its model server and with which workers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mesh_llm.planning.planner import PlanConfig, replan
from mesh_llm.planning.plans import ModelFacts, PlanNode, Solo, Split, Waiting
from mesh_llm.split._election import MeshView, plan_nodes
from mesh_llm.split.states import Loading, Serving, SplitHostState, WaitingForCapacity, WaitingForWorkers

Plan = Solo | Split | Waiting


@dataclass(frozen=True)
class HostSituation:
    """A split host's own state, as the decision sees it."""

    model: str
    facts: ModelFacts
    force: bool
    epoch: int
    plan: Plan | None = None
    has_server: bool = False
    server_ready: bool = False
    server_restarted: bool = False  # the model server restarted: a worker it used is gone


@dataclass(frozen=True)
class StartServer:
    """Start the model server: with an RPC device per worker (none: solo) holding `layer_counts`."""

    workers: tuple[str, ...] = ()
    layer_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostStep:
    """The host's next step for one model."""

    plan: Plan
    epoch: int
    replanned: bool  # stop the current server and tunnels first; the plan is this epoch's
    state: SplitHostState
    start: StartServer | None = None


def plan_config(base: PlanConfig, *, force: bool, host: str) -> PlanConfig:
    """The planner's settings for one model hosted on `host`."""
    return replace(base, force_split=force, pinned_host=host)


def decide_host(host: HostSituation, view: MeshView, base: PlanConfig) -> HostStep:
    """Re-plan if the mesh changed enough (or a worker was lost), then say what to do next."""
    nodes: list[PlanNode] = plan_nodes(view, host.model)
    previous = None if host.server_restarted else host.plan
    plan = replan(previous, nodes, host.facts, plan_config(base, force=host.force, host=view.me))
    replanned = plan is not host.plan or host.server_restarted
    epoch = host.epoch + 1 if replanned else host.epoch
    has_server = host.has_server and not replanned
    if isinstance(plan, Waiting):
        return HostStep(plan, epoch, replanned, WaitingForCapacity(plan.reason))
    if has_server:
        return HostStep(plan, epoch, replanned, Serving() if host.server_ready else Loading())
    if isinstance(plan, Solo):
        return HostStep(plan, epoch, replanned, Loading(), StartServer())
    workers = tuple(s.node_id for s in plan.shards[1:])
    missing = tuple(w[:8] for w in workers if not worker_ready(view, w, host.model, epoch))
    if missing:
        return HostStep(plan, epoch, replanned, WaitingForWorkers(missing))
    counts = tuple(s.end_layer - s.start_layer for s in plan.shards)
    return HostStep(plan, epoch, replanned, Loading(), StartServer(workers, counts))


def worker_ready(view: MeshView, node_id: str, model: str, epoch: int) -> bool:
    """Whether `node_id` advertises an RPC worker ready for this node's `model` at `epoch`."""
    member = view.peers.get(node_id)
    return member is not None and (model, view.me, epoch) in member.ready_workers


def mode(plan: Plan | None) -> str:
    """How a plan runs the model, in the words status and gossip use."""
    if isinstance(plan, Split):
        return "split"
    return "solo" if isinstance(plan, Solo) else "waiting"


def describe(plan: Plan) -> str:
    """A plan in one line, for the log."""
    if isinstance(plan, Split):
        return ", ".join(f"{s.node_id[:8]} layers {s.start_layer}-{s.end_layer - 1}" for s in plan.shards)
    if isinstance(plan, Solo):
        return f"solo on {plan.host[:8]}"
    return f"waiting ({plan.reason})"
