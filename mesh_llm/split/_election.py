"""Who coordinates each split model, and which layers this node holds for whom (pure).

Every node computes the same answers from the same gossip: the inputs are a frozen `MeshView`
of this node and its peers at one instant, the outputs are decisions (`Election`, duties) that
`SplitManager` carries out. Nothing here touches a process, a socket or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh_llm.planning.plans import PlanNode
from mesh_llm.split.claims import PeerClaim
from mesh_llm.split.host_election import HostClaim, elect_host


@dataclass(frozen=True)
class Member:
    """A peer as the split election sees it (parsed from its gossip record)."""

    node_id: str
    capacity_bytes: int
    on_disk: frozenset[str] = frozenset()
    client: bool = False
    claims: Mapping[str, PeerClaim] = field(default_factory=dict)
    wants: Mapping[str, bool] = field(default_factory=dict)
    declined: frozenset[str] = frozenset()
    connected: bool = True
    rtt_min_ms: float | None = None  # None: no measured link
    ready_workers: frozenset[tuple[str, str, int]] = frozenset()  # (model, host, epoch) it serves RPC for

    def has_copy(self, model: str) -> bool:
        """The peer has the GGUF on disk and has not declined the model."""
        return model in self.on_disk and model not in self.declined


@dataclass(frozen=True)
class OwnHost:
    """A split model this node hosts, as the election sees it."""

    force: bool
    epoch: int
    settled: bool


@dataclass(frozen=True)
class MeshView:
    """This node and its peers at one instant: every input of the election and the duties."""

    me: str
    capacity_bytes: int
    client: bool = False
    copies: frozenset[str] = frozenset()  # models with a GGUF on this node
    declined: frozenset[str] = frozenset()
    hosts: Mapping[str, OwnHost] = field(default_factory=dict)
    wants: Mapping[str, bool] = field(default_factory=dict)  # model -> forced, asked of this node
    peers: Mapping[str, Member] = field(default_factory=dict)  # in the mesh's order


@dataclass(frozen=True)
class Known:
    """A split model seen wanted or claimed in the mesh, and when it was last seen."""

    force: bool
    epoch: int
    seen: float  # monotonic seconds


@dataclass(frozen=True)
class Election:
    """What this node should do about split hosting now."""

    known: dict[str, Known]  # the memory of split models, updated
    take: tuple[tuple[str, Known], ...] = ()  # models to start coordinating
    hand_back: tuple[tuple[str, str], ...] = ()  # (model, elected node) to stop coordinating


@dataclass(frozen=True)
class DutyAssignment:
    """Layers a host asks this node to hold for one model."""

    host: str
    epoch: int
    layers: tuple[int, int]


@dataclass(frozen=True)
class Refusal:
    """A peer's plan this node will not act on, and why."""

    peer: str
    model: str
    why: str


def host_claims(view: MeshView) -> dict[str, list[HostClaim]]:
    """Who claims to coordinate each model, this node included: the election's input."""
    claims: dict[str, list[HostClaim]] = {}
    for name, host in view.hosts.items():
        claims.setdefault(name, []).append(HostClaim(view.me, host.settled))
    for peer_id, member in view.peers.items():
        for name, claim in member.claims.items():
            claims.setdefault(name, []).append(HostClaim(peer_id, claim.settled))
    return claims


def election_nodes(view: MeshView, model: str) -> list[PlanNode]:
    """Every member as a candidate to coordinate `model` (RTT plays no part in who hosts)."""
    mine = model in view.copies and model not in view.declined
    nodes = [PlanNode(view.me, view.capacity_bytes, None, mine, view.client)]
    for peer_id, m in view.peers.items():
        nodes.append(PlanNode(peer_id, m.capacity_bytes, None, m.has_copy(model), m.client))
    return nodes


def plan_nodes(view: MeshView, model: str) -> list[PlanNode]:
    """The members a host here may place `model` on: itself, and linked non-client peers."""
    nodes = [PlanNode(view.me, view.capacity_bytes, None, True, False)]
    for peer_id, m in view.peers.items():
        if m.client or m.rtt_min_ms is None or not m.connected:
            continue
        nodes.append(PlanNode(peer_id, m.capacity_bytes, m.rtt_min_ms, m.has_copy(model), False))
    return nodes


def elected(view: MeshView, model: str, claims: Mapping[str, list[HostClaim]] | None = None) -> str | None:
    """The node the mesh elects to coordinate `model`, computed as every node computes it."""
    claims = host_claims(view) if claims is None else claims
    return elect_host(election_nodes(view, model), claims.get(model, []))


def remember(known: Mapping[str, Known], view: MeshView, now: float) -> dict[str, Known]:
    """The split models seen now (hosted here, wanted, claimed) added to the memory `known`.

    A model seen again keeps the largest epoch seen, so a successor's first plan comes after
    the last one anywhere; the force flag is the last one seen.
    """
    out = dict(known)

    def see(name: str, force: bool, epoch: int) -> None:
        old = out.get(name)
        out[name] = Known(force, epoch if old is None else max(old.epoch, epoch), now)

    for name, host in view.hosts.items():
        see(name, host.force, host.epoch)
    for name, force in view.wants.items():
        see(name, force, 0)
    for name, claims in _claims_by_model(view).items():
        for claim in claims:
            see(name, claim.force, claim.epoch)
    for member in view.peers.values():
        for name, force in member.wants.items():
            see(name, force, 0)
    return out


def _claims_by_model(view: MeshView) -> dict[str, list[PeerClaim]]:
    out: dict[str, list[PeerClaim]] = {}
    for member in view.peers.values():
        for name, claim in member.claims.items():
            out.setdefault(name, []).append(claim)
    return out


def elect(
    view: MeshView,
    known: Mapping[str, Known],
    now: float,
    *,
    remember_s: float,
    may_take: bool,
) -> Election:
    """Which split models this node takes over and which it hands back, from one `view`.

    `may_take` is false during the join grace: until gossip has shown this node the whole mesh,
    it could elect itself for a model a peer it has not heard of yet already serves.
    """
    claims = host_claims(view)
    memory = remember(known, view, now)
    take: list[tuple[str, Known]] = []
    hand_back: list[tuple[str, str]] = []
    for name, k in list(memory.items()):
        if now - k.seen > remember_s:
            del memory[name]
            continue
        winner = elected(view, name, claims)
        if winner == view.me and name not in view.hosts and may_take:
            take.append((name, k))
        elif winner is not None and winner != view.me and name in view.hosts:
            hand_back.append((name, winner))
    return Election(memory, tuple(take), tuple(hand_back))


def wanted_duties(view: MeshView, max_duties: int) -> tuple[dict[str, DutyAssignment], list[Refusal]]:
    """The layers this node should hold for peers' split hosts, and the plans it refuses.

    Only the host this node's own election picks may put it to work: any other member could
    otherwise make it start RPC workers (and spend memory) at will.
    """
    wanted: dict[str, DutyAssignment] = {}
    refused: list[Refusal] = []
    if view.client:
        return wanted, refused
    claims = host_claims(view)
    for peer_id, member in view.peers.items():
        for model, claim in member.claims.items():
            mine = [(start, end) for node, start, end in claim.shards[1:] if node == view.me]
            if not mine:
                continue
            if elected(view, model, claims) != peer_id:
                refused.append(Refusal(peer_id, model, "this node elects another host for it"))
                continue
            if model not in wanted and len(wanted) >= max_duties:
                refused.append(
                    Refusal(peer_id, model, f"this node already holds layers for {max_duties} models")
                )
                continue
            wanted[model] = DutyAssignment(peer_id, claim.epoch, mine[0])
    return wanted, refused


def duty_changes(
    current: Mapping[str, DutyAssignment], wanted: Mapping[str, DutyAssignment]
) -> tuple[list[str], list[tuple[str, DutyAssignment]]]:
    """The duties to stop (changed or gone) and to start (new or changed), in that order."""
    stop = [model for model, duty in current.items() if wanted.get(model) != duty]
    kept = set(current) - set(stop)
    start = [(model, duty) for model, duty in wanted.items() if model not in kept]
    return stop, start
