"""Where a model runs: on one node (solo), split by layers across nodes, or not yet (waiting).

Pure: no I/O, no clock, no randomness. The node feeds in what gossip knows about its peers and
what the GGUF says about the model, and gets back a typed plan record (all in `plans`)::

    Plan = Solo | Split | Waiting

Rules
-----
* A node is *eligible* when it is not a client and advertises capacity above zero. Clients and
  empty nodes are never chosen for anything.
* A model *fits* a node when ``size_bytes * fit_factor <= capacity_bytes`` (10 % headroom for the
  KV cache and scratch buffers by default).
* **Solo**: when some eligible node fits the model, the host is the fitting node with the most
  capacity (ties: smallest node id). The host may download the GGUF; it need not have it yet.
* **Split**: otherwise the host is the eligible node with the most capacity (ties: smallest node
  id). Workers are eligible nodes that already have the GGUF on disk (the zero-transfer load
  needs it), can hold at least one layer, and are within ``rtt_cap_ms`` of the host; they are
  taken lowest RTT first (ties: node id) until the members' summed capacity covers
  ``size_bytes * fit_factor``. Each member gets a contiguous layer range in proportion to its
  capacity (largest-remainder method, at least one layer each), host first, then workers by
  node id, so RTT jitter never reorders the ranges.
* **Waiting**: when even every usable node together is short, with the missing bytes.
* ``force_split`` splits a model that would fit, across at least two nodes when a second
  usable worker exists; with none it falls back to solo.

Coordination
------------
:func:`election.elect_host` names the node that coordinates a model too big for the node asked
to serve it (or forced to split): a settled claimant keeps it; otherwise the eligible node with
the GGUF and the most capacity takes it. Every node computes the same answer from gossip, which is how a
dead host's model passes to the node with the next-most capacity. That node then plans with
``pinned_host`` set to itself.

RTTs
----
``PlanNode.rtt_ms`` is the round-trip time between that node and the host candidate, ``None`` for
the host candidate itself. Call :func:`host_candidate` first to learn whose RTT table to use. A
non-host node whose RTT is unknown (``None``) is never made a worker: an unmeasured peer must not
slow every token down.

Hysteresis
----------
:func:`replan` keeps a previous plan while it still holds, so ping jitter never reloads a model:
a worker stays while its RTT is at most ``rtt_cap_ms + rtt_hysteresis_ms``. When the plan must
change (a member left or crossed that limit, capacity fell short, a waiting model gained
enough capacity, a split model now fits one node), the new plan still prefers the previous host
and its members: members may stay up to cap + hysteresis, while a newcomer joins only when its
RTT is below ``rtt_cap_ms - rtt_hysteresis_ms`` -- unless that would leave the model waiting,
in which case the plain cap applies (the band damps churn; it must not keep a model down).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from mesh_llm.errors import ConfigError
from mesh_llm.planning.plans import (
    ModelFacts,
    Plan,
    PlanNode,
    Shard,
    Solo,
    Split,
    Waiting,
    capacity_rank,
    index_nodes,
    is_eligible,
)

__all__ = [
    "FIT_FACTOR",
    "PlanConfig",
    "fits",
    "host_candidate",
    "plan_model",
    "replan",
    "required_bytes",
]

# ---------------------------------------------------------------------------------------------
# Tunables


FIT_FACTOR = 1.1
"""Headroom a model needs: it fits in ``capacity`` when ``size * FIT_FACTOR <= capacity`` (10 % for
the KV cache, buffers and fragmentation). The one definition: planner, standby rules, the model a
new mesh serves and "does this need a split" all take it from here, through the frozen configs."""


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """Tunables of the planner, built once at the edge from flags."""

    fit_factor: float = FIT_FACTOR
    """A model fits in ``capacity`` when ``size * fit_factor <= capacity``."""
    rtt_cap_ms: float = 80.0
    """Workers must be at most this far (round trip) from the host."""
    rtt_hysteresis_ms: float = 10.0
    """Band around the cap that RTT jitter may move in without forcing a re-plan."""
    force_split: bool = False
    """Split even when the model fits on one node (``--split``)."""
    pinned_host: str | None = None
    """Host on this node whatever its capacity (the node that was asked to serve the model and
    coordinates its split); the model then runs solo there or is split from there, never moved."""

    def __post_init__(self) -> None:
        if not self.fit_factor > 0:
            raise ConfigError(f"fit_factor must be positive, not {self.fit_factor}")
        if not self.rtt_cap_ms > 0:
            raise ConfigError(f"rtt_cap_ms must be positive, not {self.rtt_cap_ms}")
        if not 0 <= self.rtt_hysteresis_ms < self.rtt_cap_ms:
            raise ConfigError(f"rtt_hysteresis_ms must be in [0, rtt_cap_ms), not {self.rtt_hysteresis_ms}")


# ---------------------------------------------------------------------------------------------
# Planning


def host_candidate(nodes: Iterable[PlanNode], previous: Plan | None = None) -> str | None:
    """The node a plan for these nodes would be hosted on: whose RTT table to feed in.

    The previous plan's host while it is still eligible (replans prefer it), else the eligible
    node with the most capacity (ties: smallest node id); ``None`` when no node is eligible.
    """
    by_id = index_nodes(nodes)
    if isinstance(previous, Solo | Split):
        prev = by_id.get(previous.host)
        if prev is not None and is_eligible(prev):
            return prev.node_id
    ranked = _by_capacity(by_id)
    return ranked[0].node_id if ranked else None


def plan_model(nodes: Iterable[PlanNode], facts: ModelFacts, config: PlanConfig | None = None) -> Plan:
    """Place ``facts`` on ``nodes`` from scratch (see the module docstring for the rules).

    Deterministic: the order of ``nodes`` does not matter. Raises ``ValueError`` when two
    entries share a node id.
    """
    return _plan(index_nodes(nodes), facts, config or PlanConfig(), previous=None)


def replan(
    previous: Plan | None,
    nodes: Iterable[PlanNode],
    facts: ModelFacts,
    config: PlanConfig | None = None,
) -> Plan:
    """Place ``facts`` again, keeping ``previous`` unless something more than RTT jitter changed.

    Returns ``previous`` itself (same object) when it still holds, so callers can compare with
    ``is`` to know whether to reload anything.
    """
    cfg = config or PlanConfig()
    by_id = index_nodes(nodes)
    # Only a placement of this very model is worth keeping; a waiting one takes what it can get.
    kept = previous if isinstance(previous, Solo | Split) and _same_model(previous, facts) else None
    if kept is not None and _still_holds(kept, by_id, facts, cfg):
        return kept
    fresh = _plan(by_id, facts, cfg, previous=kept)
    if kept is not None and isinstance(fresh, Waiting):
        # The hysteresis band only damps churn; it must never keep a servable model down.
        fresh = _plan(by_id, facts, cfg, previous=None)
    return previous if previous is not None and fresh == previous else fresh


def _plan(by_id: Mapping[str, PlanNode], facts: ModelFacts, cfg: PlanConfig, previous: Plan | None) -> Plan:
    required = _required(facts, cfg)
    ranked = _by_capacity(by_id)
    if not ranked:
        return Waiting(
            reason="no node offers capacity (all are clients or full)",
            missing_bytes=math.ceil(required),
            model=facts.name,
        )
    prev_host = by_id.get(previous.host) if isinstance(previous, Solo | Split) else None
    if cfg.pinned_host is not None:
        prev_host = by_id.get(cfg.pinned_host)
        if prev_host is None or not is_eligible(prev_host):
            return Waiting(
                reason="the pinned host offers no capacity",
                missing_bytes=math.ceil(required),
                model=facts.name,
            )
        ranked = [prev_host] + [n for n in ranked if n is not prev_host]
    elif prev_host is not None and not is_eligible(prev_host):
        prev_host = None

    fitting = [n for n in ranked if n.capacity_bytes >= required]
    if cfg.pinned_host is not None and not cfg.force_split:
        fitting = [prev_host] if prev_host is not None and prev_host.capacity_bytes >= required else []
    if fitting and not cfg.force_split:
        host = prev_host if prev_host is not None and prev_host.capacity_bytes >= required else fitting[0]
        return _solo(host, facts)

    layer_need = required / facts.n_layers
    host = prev_host if prev_host is not None and prev_host.capacity_bytes >= layer_need else ranked[0]
    if cfg.pinned_host is not None:
        host = ranked[0]
    if host.capacity_bytes < layer_need:
        # The biggest node cannot hold one layer, so nobody can.
        return Waiting(
            reason="no node can hold even one layer",
            missing_bytes=math.ceil(required - host.capacity_bytes),
            model=facts.name,
        )

    prev_members = set(previous.members) if isinstance(previous, Split) else {host.node_id}
    workers = sorted(
        (
            n
            for n in ranked
            if n.node_id != host.node_id
            and n.has_model
            and n.capacity_bytes >= layer_need
            and _within_cap(n, cfg, previous is not None, n.node_id in prev_members)
        ),
        key=lambda n: (n.rtt_ms, n.node_id),
    )
    min_members = 2 if cfg.force_split else 1
    members = [host]
    total = host.capacity_bytes
    for worker in workers:
        if total >= required and len(members) >= min_members:
            break
        members.append(worker)
        total += worker.capacity_bytes

    if total < required:
        return Waiting(
            reason=(
                f"{len(members)} usable node(s) within {cfg.rtt_cap_ms:g} ms of the host "
                "have too little capacity"
            ),
            missing_bytes=math.ceil(required - total),
            model=facts.name,
        )
    if len(members) < 2 or facts.n_layers < 2:
        # Only reachable with force_split: nothing to split across, so serve it whole.
        return _solo(host, facts)
    return _split(host, members[1:], facts)


def _solo(host: PlanNode, facts: ModelFacts) -> Solo:
    return Solo(host=host.node_id, model=facts.name, bytes_estimate=facts.size_bytes, n_layers=facts.n_layers)


def _split(host: PlanNode, workers: list[PlanNode], facts: ModelFacts) -> Split:
    # Ranges follow node id, not RTT, so RTT jitter cannot reorder them.
    order = [host, *sorted(workers, key=lambda n: n.node_id)]
    counts = _proportional_layers([n.capacity_bytes for n in order], facts.n_layers)
    shards = []
    start = 0
    for node, count in zip(order, counts, strict=True):
        end = start + count
        shards.append(Shard(node.node_id, start, end, _bytes_for(facts, start, end)))
        start = end
    return Split(host=host.node_id, shards=tuple(shards), model=facts.name, n_layers=facts.n_layers)


def _proportional_layers(capacities: list[int], n_layers: int) -> list[int]:
    """Largest-remainder split of ``n_layers`` by ``capacities``, at least one layer each.

    Exact arithmetic (Fraction), so the result never depends on float rounding. Remainder ties
    go to the earlier entry (the host first).
    """
    total = sum(capacities)
    quotas = [Fraction(n_layers * c, total) for c in capacities]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n_layers - sum(counts)]:
        counts[i] += 1
    # A member whose quota is below one layer still gets one; it comes from the member that
    # is most over its quota, which keeps everyone as close to proportional as possible.
    for i in range(len(counts)):
        if counts[i] == 0:
            donor = max(
                (j for j in range(len(counts)) if counts[j] > 1),
                key=lambda j: (counts[j] - quotas[j], -j),
            )
            counts[donor] -= 1
            counts[i] = 1
    return counts


def _bytes_for(facts: ModelFacts, start: int, end: int) -> int:
    # Telescoping integer bounds: the shards' estimates sum to the model size exactly.
    return facts.size_bytes * end // facts.n_layers - facts.size_bytes * start // facts.n_layers


# ---------------------------------------------------------------------------------------------
# Hysteresis


def _still_holds(
    previous: Solo | Split, by_id: Mapping[str, PlanNode], facts: ModelFacts, cfg: PlanConfig
) -> bool:
    required = _required(facts, cfg)
    if isinstance(previous, Solo):
        host = by_id.get(previous.host)
        return (
            not cfg.force_split and host is not None and is_eligible(host) and host.capacity_bytes >= required
        )

    if not cfg.force_split and any(n.capacity_bytes >= required for n in _by_capacity(by_id)):
        return False  # one node can now take the whole model: solo is much faster than a split
    layer_need = required / facts.n_layers
    layer_bytes = math.ceil(facts.size_bytes / facts.n_layers)
    total = 0
    for shard in previous.shards:
        node = by_id.get(shard.node_id)
        if node is None or not is_eligible(node):
            return False
        if node.node_id != previous.host and not (
            node.has_model
            and node.capacity_bytes >= layer_need
            and _within_cap(node, cfg, replanning=True, member=True)
        ):
            return False
        # Rounding may put up to one layer more on a member than its proportional share.
        if shard.bytes_estimate > node.capacity_bytes + layer_bytes:
            return False
        total += node.capacity_bytes
    return total >= required


def _within_cap(node: PlanNode, cfg: PlanConfig, replanning: bool, member: bool) -> bool:
    rtt = node.rtt_ms
    if rtt is None or math.isnan(rtt):
        return False
    if not replanning:
        return rtt <= cfg.rtt_cap_ms
    if member:
        return rtt <= cfg.rtt_cap_ms + cfg.rtt_hysteresis_ms
    return rtt < cfg.rtt_cap_ms - cfg.rtt_hysteresis_ms


def _same_model(previous: Solo | Split, facts: ModelFacts) -> bool:
    if previous.model != facts.name or previous.n_layers != facts.n_layers:
        return False
    if isinstance(previous, Solo):
        return previous.bytes_estimate == facts.size_bytes
    return sum(s.bytes_estimate for s in previous.shards) == facts.size_bytes


# ---------------------------------------------------------------------------------------------
# Helpers


def _by_capacity(by_id: Mapping[str, PlanNode]) -> list[PlanNode]:
    """Eligible nodes, most capacity first, ties by node id."""
    return sorted((n for n in by_id.values() if is_eligible(n)), key=capacity_rank)


def required_bytes(size_bytes: int, fit_factor: float) -> Fraction:
    """Capacity a node needs to hold ``size_bytes`` of weights: ``size_bytes * fit_factor``, exactly.

    A float such as 1.1 is slightly above the ratio it is written as (11/10); computing with that
    exact ratio keeps a node with precisely ``size * fit_factor`` bytes counted as fitting.
    """
    return size_bytes * Fraction(fit_factor).limit_denominator(1_000_000)


def fits(capacity_bytes: int, size_bytes: int, fit_factor: float) -> bool:
    """Whether a model of ``size_bytes`` fits in ``capacity_bytes`` with ``fit_factor`` headroom."""
    return capacity_bytes >= required_bytes(size_bytes, fit_factor)


def _required(facts: ModelFacts, cfg: PlanConfig) -> Fraction:
    return required_bytes(facts.size_bytes, cfg.fit_factor)
