"""The planner's records (pure): what it is told about nodes and a model, and the plans it returns.

    PlanNode, ModelFacts         inputs: one node of the mesh, the model being placed
    Plan = Solo | Split | Waiting  the outcome; a split is made of `Shard`s, host first
    PlanRow                      one line of ``mesh-llm plan MODEL`` (`describe_plan`)

The rules that turn the one into the other are in `planner`; who coordinates a model is in
`election`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from mesh_llm.errors import ModelError

__all__ = [
    "ModelFacts",
    "Plan",
    "PlanNode",
    "PlanRow",
    "Shard",
    "Solo",
    "Split",
    "Waiting",
    "capacity_rank",
    "describe_plan",
    "index_nodes",
    "is_eligible",
    "summarize_plan",
]

# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, slots=True)
class PlanNode:
    """What the planner needs to know about one node of the mesh."""

    node_id: str
    capacity_bytes: int
    """Memory this node offers for the model being planned (VRAM, or RAM on CPU-only nodes).

    Count memory that this same model already occupies on the node as offered; otherwise a
    serving host looks full to its own re-plan and the model moves for nothing.
    """
    rtt_ms: float | None
    """Round-trip time from the host candidate; ``None`` for the host candidate itself."""
    has_model: bool
    """Whether the model's GGUF is already on this node's disk."""
    client: bool = False
    """API-only member: never serves, never downloads."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the GGUF says about the model being placed."""

    name: str
    size_bytes: int
    n_layers: int

    def __post_init__(self) -> None:
        if self.size_bytes <= 0:
            raise ModelError(f"model {self.name!r} has a size of {self.size_bytes} bytes")
        if self.n_layers < 1:
            raise ModelError(f"model {self.name!r} has {self.n_layers} layers")


# ---------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class Solo:
    """The whole model runs on ``host``."""

    host: str
    model: str
    bytes_estimate: int
    n_layers: int


@dataclass(frozen=True, slots=True)
class Shard:
    """Layers ``[start_layer, end_layer)`` of a split model, held by ``node_id``."""

    node_id: str
    start_layer: int
    end_layer: int
    bytes_estimate: int

    @property
    def n_layers(self) -> int:
        """How many layers this shard holds."""
        return self.end_layer - self.start_layer


@dataclass(frozen=True, slots=True)
class Split:
    """The model is split by layers; ``host`` serves HTTP and holds the first shard."""

    host: str
    shards: tuple[Shard, ...]
    model: str
    n_layers: int

    @property
    def members(self) -> tuple[str, ...]:
        """Node ids of all members, host first."""
        return tuple(s.node_id for s in self.shards)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The mesh cannot place the model yet; ``missing_bytes`` more capacity would do."""

    reason: str
    missing_bytes: int
    model: str


Plan: TypeAlias = Solo | Split | Waiting


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One line of ``mesh-llm plan MODEL``: a node, its role and its share of the model."""

    node_id: str
    role: str  # "host" or "worker"
    start_layer: int
    end_layer: int
    bytes_estimate: int

    @property
    def n_layers(self) -> int:
        """How many layers this node holds."""
        return self.end_layer - self.start_layer


# ---------------------------------------------------------------------------------------------
# Nodes


def index_nodes(nodes: Iterable[PlanNode]) -> dict[str, PlanNode]:
    """Node id -> node. Raises ``ValueError`` when two entries share a node id."""
    by_id: dict[str, PlanNode] = {}
    for node in nodes:
        if node.node_id in by_id:
            raise ValueError(f"node {node.node_id!r} appears twice")
        by_id[node.node_id] = node
    return by_id


def is_eligible(node: PlanNode) -> bool:
    """Whether the node may be chosen at all: not a client, and offering some capacity."""
    return not node.client and node.capacity_bytes > 0


def capacity_rank(node: PlanNode) -> tuple[int, str]:
    """Sort key: most capacity first, ties by node id."""
    return (-node.capacity_bytes, node.node_id)


# ---------------------------------------------------------------------------------------------
# Presentation (pure; the CLI renders)


def describe_plan(plan: Plan) -> list[PlanRow]:
    """Rows for ``mesh-llm plan MODEL``: each member's layer range and memory, host first.

    A waiting plan has no rows; show :func:`summarize_plan` instead.
    """
    if isinstance(plan, Solo):
        return [PlanRow(plan.host, "host", 0, plan.n_layers, plan.bytes_estimate)]
    if isinstance(plan, Split):
        return [
            PlanRow(
                s.node_id,
                "host" if s.node_id == plan.host else "worker",
                s.start_layer,
                s.end_layer,
                s.bytes_estimate,
            )
            for s in plan.shards
        ]
    return []


def summarize_plan(plan: Plan) -> str:
    """One human line about a plan, for logs, status tables and the console."""
    if isinstance(plan, Solo):
        return f"{plan.model}: solo on {plan.host} ({_gb(plan.bytes_estimate)})"
    if isinstance(plan, Split):
        return (
            f"{plan.model}: split across {len(plan.shards)} nodes, host {plan.host} ({plan.n_layers} layers)"
        )
    return f"{plan.model}: waiting, {plan.reason}; needs {_gb(plan.missing_bytes)} more"


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
