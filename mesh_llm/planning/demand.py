"""How much each model is asked for, mesh-wide, and which idle standby should serve what.

Pure: no I/O and no clock; ``now`` (monotonic seconds) is always passed in.

Demand
------
Every node counts the requests its own API receives, per model, including requests for models
nobody serves (those models are *wanted*). It gossips its counters; :class:`DemandTable` merges
them per node (a peer's newer record replaces its older one; counters only grow within one
node generation), so every node that has seen the same gossip agrees on the mesh-wide totals.

From the growth of those counters the table keeps an exponentially decaying requests-per-minute
estimate per model: each new request adds 1 to a score that halves every ``half_life_s``
seconds, and ``rate = score * ln 2 / half_life * 60``. Under a steady rate r the estimate
converges to r; when requests stop it halves every half-life, so stale interest fades on its own.

Standby promotion
-----------------
A *standby* is a non-client node that serves nothing. :func:`assign_standby_work` gives every
standby at most one model, computed the same way on every node so that two standbys never take
the same slot; :func:`choose_standby_work` is this node's share of it. Rules, in order:

1. **Unserved**: a model with demand and no server, taken hottest first, goes to one standby
   that fits it (``size * fit_factor <= capacity``), has not declined it (``mesh-llm drop``) and
   has the GGUF on disk or may download it. Demand here is a rate of at least
   ``wanted_min_rpm``, or any request in the last ``recent_s`` seconds; a model wanted only that
   way goes to a standby that has it on disk (a stray request starts no download). A model that
   loses its last server keeps its demand, so the next evaluation hands it to a standby.
2. **Hot**: otherwise a standby joins the model with the highest per-server load when that load
   is at least ``hot_min_rpm_per_server`` and at least ``hot_ratio`` times the per-server load
   of the coldest *other* served model (a model served alone needs only the first condition).
   Loads are recomputed after each promotion, so several standbys may join one very hot model.

Among standbys that could take a slot, one with the GGUF on disk beats one that must download,
then the smallest that fits (big standbys stay free for big models), then the smallest node id.
Models below ``wanted_min_rpm`` count as no demand at all: decayed interest pins no capacity.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from mesh_llm.errors import ConfigError
from mesh_llm.planning.planner import FIT_FACTOR, fits

__all__ = [
    "DEMAND_HALF_LIFE_S",
    "Decision",
    "DemandConfig",
    "DemandTable",
    "PromotionReason",
    "StandbyInfo",
    "assign_standby_work",
    "choose_standby_work",
]

DEMAND_HALF_LIFE_S = 180.0
"""Half-life of the demand estimate: long enough to ride out a quiet minute, short enough that a
burst stops counting within about a quarter of an hour (five half-lives, about 3 %)."""


@dataclass(frozen=True, slots=True)
class DemandConfig:
    """Tunables of demand tracking and standby promotion."""

    half_life_s: float = DEMAND_HALF_LIFE_S
    """Seconds for the requests-per-minute estimate to halve when requests stop."""
    wanted_min_rpm: float = 0.5
    """Below this a model counts as not in demand (a single request scores about 0.23)."""
    hot_min_rpm_per_server: float = 10.0
    """A served model is hot from this many requests per minute per server."""
    hot_ratio: float = 3.0
    """...and when its per-server load is this many times the coldest other served model's."""
    fit_factor: float = FIT_FACTOR
    """A model fits a standby when ``size * fit_factor <= capacity`` (same rule as the planner)."""
    recent_s: float = 60.0
    """A model requested this recently counts as wanted, whatever its rate (first request on)."""

    def __post_init__(self) -> None:
        if not self.half_life_s > 0:
            raise ConfigError(f"half_life_s must be positive, not {self.half_life_s}")
        if not self.wanted_min_rpm > 0:
            raise ConfigError(f"wanted_min_rpm must be positive, not {self.wanted_min_rpm}")
        if not self.hot_min_rpm_per_server > 0:
            raise ConfigError(f"hot_min_rpm_per_server must be positive, not {self.hot_min_rpm_per_server}")
        if not self.hot_ratio >= 1:
            raise ConfigError(f"hot_ratio must be at least 1, not {self.hot_ratio}")
        if not self.fit_factor > 0:
            raise ConfigError(f"fit_factor must be positive, not {self.fit_factor}")
        if not self.recent_s >= 0:
            raise ConfigError(f"recent_s must be 0 or more, not {self.recent_s}")


# ---------------------------------------------------------------------------------------------
# Demand table


@dataclass(slots=True)
class _Score:
    """An exponentially decaying count of requests."""

    value: float = 0.0
    at: float = -math.inf

    def decayed(self, now: float, half_life_s: float) -> float:
        if self.value == 0.0:
            return 0.0
        # A clock that steps back (or out-of-order calls) must not inflate the score.
        elapsed = max(0.0, now - self.at)
        return self.value * math.exp2(-elapsed / half_life_s)

    def add(self, amount: float, now: float, half_life_s: float) -> None:
        self.value = self.decayed(now, half_life_s) + amount
        self.at = max(self.at, now)


@dataclass(slots=True)
class _PeerCounters:
    generation: int
    counts: dict[str, int] = field(default_factory=dict)


class DemandTable:
    """Per-model request counters of the whole mesh and a decaying rate estimate per model.

    One per node. ``record`` counts this node's own requests; ``own_counters`` is what it
    gossips; ``merge`` takes a peer's gossiped counters. All methods that depend on time take
    ``now`` (monotonic seconds).
    """

    def __init__(self, self_id: str, config: DemandConfig | None = None) -> None:
        self.self_id = self_id
        self.config = config or DemandConfig()
        self._own: dict[str, int] = {}
        self._peers: dict[str, _PeerCounters] = {}
        self._scores: dict[str, _Score] = {}

    # -- this node ------------------------------------------------------------------------

    def record(self, model: str, now: float, n: int = 1) -> None:
        """Count ``n`` requests for ``model`` received by this node's API (served or not)."""
        if n <= 0:
            return
        self._own[model] = self._own.get(model, 0) + n
        self._bump(model, n, now)

    def own_counters(self) -> dict[str, int]:
        """This node's cumulative counters, to gossip with its node generation."""
        return dict(self._own)

    # -- peers ----------------------------------------------------------------------------

    def merge(self, node_id: str, counters: Mapping[str, int], now: float, generation: int = 0) -> None:
        """Take ``node_id``'s gossiped counters (its own, cumulative since its ``generation``).

        The first record seen from a node is a baseline: its past requests are not demand now.
        A higher generation (the node restarted) replaces the old counters and its counts are
        new demand; a lower one is stale and ignored; within a generation each counter only
        grows, so records arriving out of order or twice change nothing. Our own id is ignored:
        we know our counters better than any echo of them.
        """
        if node_id == self.self_id:
            return
        clean = {m: c for m, c in counters.items() if c > 0}
        known = self._peers.get(node_id)
        if known is None:
            self._peers[node_id] = _PeerCounters(generation, clean)
            return
        if generation < known.generation:
            return
        if generation > known.generation:
            known.generation = generation
            known.counts = clean
            for model, count in clean.items():
                self._bump(model, count, now)
            return
        for model, count in clean.items():
            delta = count - known.counts.get(model, 0)
            if delta > 0:
                known.counts[model] = count
                self._bump(model, delta, now)

    def forget(self, node_id: str) -> None:
        """Drop a departed peer's counters. The demand it reported keeps decaying as usual."""
        self._peers.pop(node_id, None)

    # -- queries --------------------------------------------------------------------------

    def total(self, model: str) -> int:
        """Requests for ``model`` counted mesh-wide (each node since its current generation)."""
        return self._own.get(model, 0) + sum(p.counts.get(model, 0) for p in self._peers.values())

    def totals(self) -> dict[str, int]:
        """Mesh-wide request totals of every model ever counted, by model name."""
        models = set(self._own).union(*(p.counts for p in self._peers.values()))
        return {m: self.total(m) for m in sorted(models)}

    def rate(self, model: str, now: float) -> float:
        """Decaying estimate of mesh-wide requests per minute for ``model``."""
        score = self._scores.get(model)
        if score is None:
            return 0.0
        return score.decayed(now, self.config.half_life_s) * math.log(2) / self.config.half_life_s * 60.0

    def rates(self, now: float) -> dict[str, float]:
        """Requests per minute of every model with any recorded demand, by model name."""
        return {m: self.rate(m, now) for m in sorted(self._scores)}

    def recent(self, now: float) -> frozenset[str]:
        """Models requested anywhere in the mesh in the last ``recent_s`` seconds."""
        return frozenset(
            m
            for m, score in self._scores.items()
            if score.value > 0 and now - score.at <= self.config.recent_s
        )

    def wanted(self, served: Mapping[str, Sequence[str]], now: float) -> list[str]:
        """Models in demand (at least ``wanted_min_rpm``) that no node serves, hottest first."""
        rates = self.rates(now)
        return sorted(
            (m for m, r in rates.items() if r >= self.config.wanted_min_rpm and not served.get(m)),
            key=lambda m: (-rates[m], m),
        )

    def prune(self, now: float, below_rpm: float = 0.01) -> None:
        """Forget rate estimates that have decayed below ``below_rpm`` (bounds memory)."""
        for model in [m for m in self._scores if self.rate(m, now) < below_rpm]:
            del self._scores[model]

    def _bump(self, model: str, n: int, now: float) -> None:
        self._scores.setdefault(model, _Score()).add(float(n), now, self.config.half_life_s)


# ---------------------------------------------------------------------------------------------
# Standby promotion


@dataclass(frozen=True, slots=True)
class StandbyInfo:
    """An idle node that could start serving a model."""

    node_id: str
    capacity_bytes: int
    on_disk: frozenset[str] = frozenset()
    """Models whose GGUF this node already has."""
    can_download: bool = True
    """Whether it may fetch a GGUF it lacks."""
    client: bool = False
    """Clients never serve; one passed in here is ignored."""
    declined: frozenset[str] = frozenset()
    """Models the user dropped on this node: it never takes them again."""


class PromotionReason(Enum):
    """Why a standby was given a model."""

    UNSERVED = "unserved"  # rule 1: in demand, nobody serves it
    HOT = "hot"  # rule 2: served, but its servers are overloaded


@dataclass(frozen=True, slots=True)
class Decision:
    """Standby ``node_id`` should start serving ``model``."""

    node_id: str
    model: str
    reason: PromotionReason
    download: bool
    """True when the GGUF is not on the standby's disk yet."""
    rate_rpm: float
    """Mesh-wide requests per minute for the model when decided, for logs."""


def assign_standby_work(
    standbys: Iterable[StandbyInfo],
    served: Mapping[str, Sequence[str]],
    rates: Mapping[str, float],
    model_sizes: Mapping[str, int],
    config: DemandConfig | None = None,
    recent: Collection[str] = (),
) -> dict[str, Decision]:
    """Give each standby at most one model to serve, by the rules in the module docstring.

    ``served`` maps a model to the nodes serving it, including nodes still loading it (else a
    loading model would look unserved and draw a second standby). ``rates`` is requests per
    minute by model (``DemandTable.rates``); ``model_sizes`` is bytes by model, and a model
    missing from it cannot be placed; ``recent`` lists models requested lately
    (``DemandTable.recent``). Deterministic: the same inputs in any order give the
    same assignment, so every node computes the same one. Returns decisions by node id.
    Raises ``ValueError`` when two standbys share a node id.
    """
    cfg = config or DemandConfig()
    busy = {node for nodes in served.values() for node in nodes}
    pool: dict[str, StandbyInfo] = {}
    for s in sorted(standbys, key=lambda s: s.node_id):
        if s.node_id in pool:
            raise ValueError(f"standby {s.node_id!r} appears twice")
        if not s.client and s.capacity_bytes > 0 and s.node_id not in busy:
            pool[s.node_id] = s
    servers = {m: len(set(nodes)) for m, nodes in served.items() if nodes}
    # Below the floor a model has no demand at all, so stale interest pins nothing.
    demand = {m: r for m, r in rates.items() if r >= cfg.wanted_min_rpm}
    # ...but a model nobody serves that was asked for just now is wanted, from its first request.
    asked = {m: rates.get(m, 0.0) for m in recent if m not in demand and m not in servers}
    decisions: dict[str, Decision] = {}

    def promote(model: str, reason: PromotionReason) -> bool:
        size = model_sizes.get(model)
        if size is None:
            return False
        standby = _pick_standby(pool.values(), model, size, cfg, on_disk_only=model in asked)
        if standby is None:
            return False
        del pool[standby.node_id]
        servers[model] = servers.get(model, 0) + 1
        decisions[standby.node_id] = Decision(
            node_id=standby.node_id,
            model=model,
            reason=reason,
            download=model not in standby.on_disk,
            rate_rpm=demand.get(model, asked.get(model, 0.0)),
        )
        return True

    # Rule 1: one standby per unserved model in demand, hottest first (then those just asked for).
    unserved = sorted((m for m in demand if m not in servers), key=lambda m: (-demand[m], m))
    for model in unserved + sorted(asked, key=lambda m: (-asked[m], m)):
        promote(model, PromotionReason.UNSERVED)

    # Rule 2: one standby at a time to the hottest model that still qualifies.
    while pool:
        loads = {m: demand.get(m, 0.0) / n for m, n in servers.items()}
        hot = sorted(
            (m for m in loads if m in demand and _is_hot(m, loads, cfg)),
            key=lambda m: (-loads[m], m),
        )
        if not any(promote(m, PromotionReason.HOT) for m in hot):
            break
    return decisions


def choose_standby_work(
    self_id: str,
    standbys: Iterable[StandbyInfo],
    served: Mapping[str, Sequence[str]],
    rates: Mapping[str, float],
    model_sizes: Mapping[str, int],
    config: DemandConfig | None = None,
    recent: Collection[str] = (),
) -> Decision | None:
    """This standby's share of :func:`assign_standby_work`: what to serve, or ``None`` to stay idle.

    ``standbys`` must list every standby of the mesh (this one included), not just this node:
    the slot a node takes depends on which others could take it.
    """
    return assign_standby_work(standbys, served, rates, model_sizes, config, recent).get(self_id)


def _is_hot(model: str, loads: Mapping[str, float], cfg: DemandConfig) -> bool:
    load = loads[model]
    if load < cfg.hot_min_rpm_per_server:
        return False
    others = [v for m, v in loads.items() if m != model]
    return not others or load >= cfg.hot_ratio * min(others)


def _pick_standby(
    pool: Iterable[StandbyInfo], model: str, size: int, cfg: DemandConfig, *, on_disk_only: bool = False
) -> StandbyInfo | None:
    able = [
        s
        for s in pool
        if fits(s.capacity_bytes, size, cfg.fit_factor)
        and model not in s.declined
        and (model in s.on_disk or (s.can_download and not on_disk_only))
    ]
    if not able:
        return None
    # Prefer no download, then the tightest fit (keep big standbys for big models), then id.
    return min(able, key=lambda s: (model not in s.on_disk, s.capacity_bytes, s.node_id))
