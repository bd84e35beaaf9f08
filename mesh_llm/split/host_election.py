"""Who coordinates a model (pure): the same answer on every node, from gossip."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.planning.plans import PlanNode, capacity_rank, index_nodes, is_eligible

__all__ = ["HostClaim", "elect_host"]


@dataclass(frozen=True, slots=True)
class HostClaim:
    """A node that says it coordinates a model (published in its gossip record)."""

    node_id: str
    settled: bool
    """Its plan places the model (solo or split), so moving it would reload it; an unsettled
    claim (still waiting for capacity) has loaded nothing and yields to a better host."""


def elect_host(nodes: Iterable[PlanNode], claims: Iterable[HostClaim]) -> str | None:
    """The node that should coordinate a model, computed identically on every node.

    A settled claimant that is still eligible keeps the model (the best ranked one, should two
    claim it at once), so a bigger node joining never reloads a serving model. Otherwise the
    host is the eligible node with the GGUF on disk that has the most capacity (ties: smallest
    node id); that is also how a host that died or dropped the model is succeeded by the node
    with the next-most capacity. ``None`` when no eligible node has the file.
    """
    by_id = index_nodes(nodes)
    settled = [
        by_id[c.node_id] for c in claims if c.settled and c.node_id in by_id and is_eligible(by_id[c.node_id])
    ]
    if settled:
        return min(settled, key=capacity_rank).node_id
    holders = [n for n in by_id.values() if is_eligible(n) and n.has_model]
    return min(holders, key=capacity_rank).node_id if holders else None
