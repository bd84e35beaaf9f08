"""The node's routing table: where each model is served, derived by one pure function.

`derive_table` takes what the node knows at one instant (`RoutingInputs`: its own endpoints,
the mesh's peers, demand, the standbys) and returns a frozen `RoutingTable`. The node derives
it again whenever an input changes (gossip, a model server's state, a model asked for that
nobody serves) and once a second for what only time changes (demand decays, known models
expire). The proxy, status, the console and the standby logic read the table; none of them
recomputes it, and a request plans nothing.

The one per-request change is load: `with_load` copies the table with this node's in-flight
counts, so the least-loaded host is chosen as before, without planning again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.api.routing import Endpoint
from mesh_llm.config import DemandConfig
from mesh_llm.mesh.gossip import PeerStatus, PeerView
from mesh_llm.planning.demand import Decision, StandbyInfo, assign_standby_work
from mesh_llm.settings import node_default
from mesh_llm.split.claims import peer_claims, peer_declined

UNREACHABLE = "unreachable"  # a remote host's state once its peer is lost or not alive


@dataclass(frozen=True)
class RoutingInputs:
    """Everything the table is derived from, frozen at one instant (`now`, monotonic)."""

    node_id: str
    now: float
    local: tuple[Endpoint, ...] = ()  # this node's model servers, split hosts, models asked for
    servers: frozenset[str] = frozenset()  # models with a local model server (their load changes)
    slotted: frozenset[str] = frozenset()  # local servers whose engine reports free slots
    peers: Mapping[str, PeerView] = field(default_factory=dict)
    suspects: frozenset[str] = frozenset()  # linked peers leaving pings unanswered (likely frozen)
    wants: tuple[str, ...] = ()  # split models this node waits for a host for
    declined: frozenset[str] = frozenset()  # models the user dropped on this node
    standbys: tuple[StandbyInfo, ...] = ()  # every standby of the mesh, this node included
    rates: Mapping[str, float] = field(default_factory=dict)  # requests/min by model, mesh-wide
    recent: frozenset[str] = frozenset()  # models requested anywhere lately
    sizes: Mapping[str, int] = field(default_factory=dict)
    demand: DemandConfig = field(default_factory=DemandConfig)
    known: Mapping[str, float] = field(default_factory=dict)  # the previous table's known models
    known_memory_s: float = 600.0
    started_at: float = 0.0
    n_parallel: int = node_default("parallel")  # request slots per local model server
    # (model, host) -> digests of conversations this node routed there lately (api/prefix)
    prefixes: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingTable:
    """Where each model is served, as of one derivation. Readers only read it."""

    endpoints: tuple[Endpoint, ...] = ()
    # model -> nodes serving it (loading too); lost hosts serve nothing (what standbys plan with)
    served: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    known: Mapping[str, float] = field(default_factory=dict)  # model -> when last seen served
    wanted: frozenset[str] = frozenset()  # models in demand and unlisted, or asked for lately
    standby_work: Mapping[str, Decision] = field(default_factory=dict)  # standby id -> its model
    cards: tuple[Mapping[str, Any], ...] = ()  # /v1/models
    servers: frozenset[str] = frozenset()
    slotted: frozenset[str] = frozenset()
    n_parallel: int = node_default("parallel")

    def with_load(self, in_flight: Mapping[str, int]) -> RoutingTable:
        """This table with this node's in-flight counts (and so its free slots) as given."""
        endpoints = tuple(
            dataclasses.replace(
                e, in_flight=in_flight.get(e.model, 0), free_slots=self._free(e.model, in_flight)
            )
            if e.local and e.model in self.servers
            else e
            for e in self.endpoints
        )
        return dataclasses.replace(self, endpoints=endpoints)

    def with_routed(self, model: str, host: str, digest: str) -> RoutingTable:
        """This table after a turn of `digest`'s conversation went to `host`: it holds the
        conversation's longest prefix now, so no other host of `model` is preferred for it."""
        endpoints = tuple(
            e
            if e.model != model or (digest in e.prefixes) == (e.node_id == host)
            else dataclasses.replace(
                e, prefixes=e.prefixes | {digest} if e.node_id == host else e.prefixes - {digest}
            )
            for e in self.endpoints
        )
        return dataclasses.replace(self, endpoints=endpoints)

    def _free(self, model: str, in_flight: Mapping[str, int]) -> int | None:
        """Free slots now: the engine's count at its last check, less requests sent since."""
        return max(0, self.n_parallel - in_flight.get(model, 0)) if model in self.slotted else None


def derive_table(inputs: RoutingInputs) -> RoutingTable:
    """The routing table for `inputs`: endpoints in the order the proxy has always seen them."""
    now = inputs.now
    out = list(inputs.local)
    for node_id, view in sorted(inputs.peers.items()):
        out += _peer_endpoints(node_id, view, node_id in inputs.suspects)
    for name in inputs.wants:
        if not any(e.model == name for e in out):
            out.append(Endpoint(name, "", False, state="electing a host for it in the mesh"))
    known = dict(inputs.known)
    for e in out:
        known[e.model] = now
    names = {e.model for e in out}
    listed = {m: [m] for m in names}
    in_demand = {m for m, r in inputs.rates.items() if r >= inputs.demand.wanted_min_rpm and m not in names}
    wanted = in_demand | inputs.recent
    if wanted - names:
        taker = _takers(inputs, listed)
        for model in sorted(wanted - names):
            if model in taker:
                names.add(model)
                known[model] = now
                out.append(
                    Endpoint(model, "", False, state=f"standby node {taker[model][:8]} is about to load it")
                )
    for model, seen in list(known.items()):
        if now - seen > inputs.known_memory_s:
            del known[model]
        elif model not in names:
            # Fail clearly rather than with a 404: the model was here and may come back.
            out.append(Endpoint(model, "", False, state=_unserved_reason(inputs, model)))
    served: dict[str, list[str]] = {}
    for e in out:
        if e.node_id and e.state != UNREACHABLE:
            served.setdefault(e.model, []).append(e.node_id)
    work = assign_standby_work(
        inputs.standbys, served, inputs.rates, inputs.sizes, recent=inputs.recent, config=inputs.demand
    )
    return RoutingTable(
        endpoints=_holding(out, inputs.peers, inputs.prefixes),
        served={m: tuple(ids) for m, ids in served.items()},
        known=known,
        wanted=frozenset(wanted),
        standby_work=work,
        cards=_cards(out, inputs.started_at),
        servers=inputs.servers,
        slotted=inputs.slotted,
        n_parallel=inputs.n_parallel,
    )


def _peer_endpoints(node_id: str, view: PeerView, suspect: bool = False) -> list[Endpoint]:
    out = []
    for ad in view.record.models:
        if ad.role != "host":
            continue  # split workers hold layers; only hosts take HTTP traffic
        ready = ad.ready and view.connected and view.status is PeerStatus.ALIVE
        state = "ready" if ready else ("loading" if not ad.ready else UNREACHABLE)
        out.append(
            Endpoint(
                ad.name,
                node_id,
                ready,
                ad.in_flight,
                local=False,
                state=state,
                free_slots=ad.free_slots,
                suspect=suspect,
            )
        )
    hosted = {ad.name for ad in view.record.models if ad.role == "host"}
    for name, claim in peer_claims(view.record.extra).items():
        if name not in hosted:  # a split still being placed there: say what it waits for
            out.append(Endpoint(name, node_id, False, local=False, state=claim.state or claim.mode))
    return out


def _holding(
    endpoints: list[Endpoint],
    peers: Mapping[str, PeerView],
    routed: Mapping[tuple[str, str], tuple[str, ...]],
) -> tuple[Endpoint, ...]:
    """Each host with the prefixes it holds: what it advertises, and what this node sent it.

    Where this node sent a conversation's latest turn wins over what another host advertises:
    that host holds its longest prefix."""
    sent_to = {(model, d): host for (model, host), digests in routed.items() for d in digests}
    out = []
    for e in endpoints:
        view = peers.get(e.node_id) if not e.local else None
        held = set(routed.get((e.model, e.node_id), ()))
        if view is not None:
            advertised = (p for ad in view.record.models if ad.name == e.model for p in ad.prefixes)
            held.update(p for p in advertised if sent_to.get((e.model, p), e.node_id) == e.node_id)
        out.append(dataclasses.replace(e, prefixes=e.prefixes | held) if held else e)
    return tuple(out)


def _takers(inputs: RoutingInputs, served: Mapping[str, list[str]]) -> dict[str, str]:
    """Model -> the standby the mesh-wide rules give it now (what every node computes)."""
    decisions = assign_standby_work(
        inputs.standbys, served, inputs.rates, inputs.sizes, recent=inputs.recent, config=inputs.demand
    )
    return {d.model: node_id for node_id, d in decisions.items()}


def _unserved_reason(inputs: RoutingInputs, model: str) -> str:
    """What is happening to a known model nobody serves, and what the user can do."""
    decliners = sorted(
        [inputs.node_id[:8]] * (model in inputs.declined)
        + [node_id[:8] for node_id, view in inputs.peers.items() if model in peer_declined(view.record.extra)]
    )
    why = "no node in the mesh serves it right now and no standby node can take it"
    if decliners:
        why += f" (dropped with `mesh-llm drop` on {', '.join(decliners)})"
    return f"offline: {why}; start a node with `mesh-llm --model {model} --join <token>` to serve it"


def _cards(endpoints: list[Endpoint], started_at: float) -> tuple[Mapping[str, Any], ...]:
    by_model: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        if e.node_id:
            by_model.setdefault(e.model, []).append(e)
    return tuple(
        {
            "id": model,
            "object": "model",
            "created": int(started_at),
            "owned_by": "mesh-llm",
            "ready": any(e.ready for e in eps),
            "hosts": sorted(e.node_id[:8] for e in eps),
        }
        for model, eps in sorted(by_model.items())
    )
