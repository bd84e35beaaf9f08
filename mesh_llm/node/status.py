"""The node's status as plain JSON-able data: what /api/status, /api/events and `mesh-llm status` show.

`build_status` is a pure function of a `StatusSnapshot`: frozen records of what the node knows
at one instant (its servers, split hosts, peers, demand, mesh). The node takes the snapshot
(`Node.status_snapshot`); a test builds one by hand, with no processes and no mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_llm import __version__
from mesh_llm.mesh.gossip import PeerView
from mesh_llm.models.states import PendingState
from mesh_llm.serving.hardware import Capacity
from mesh_llm.serving.model_server import BackendStatus
from mesh_llm.split.claims import PeerClaim, peer_claims


@dataclass(frozen=True)
class LocalModel:
    """A model server this node runs, with its traffic. `split` holds its split host's fields."""

    name: str
    status: BackendStatus
    path: str
    size_bytes: int
    in_flight: int = 0
    requests: int = 0
    slots: Mapping[str, Any] | None = None
    draft: Any = None
    draft_error: str | None = None
    load_s: float | None = None
    split: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WaitingSplit:
    """A model this node hosts as a split that has no model server yet."""

    name: str
    message: str  # the split host's state, in words
    path: str
    size_bytes: int
    requests: int
    split: Mapping[str, Any]


@dataclass(frozen=True)
class PeerSnapshot:
    """One peer as this node sees it, with what it measured and sent there."""

    node_id: str
    view: PeerView
    rtt_ms: float | None = None
    rtt_min_ms: float | None = None
    routed: Mapping[str, int] = field(default_factory=dict)  # model -> requests this node sent it
    path: str | None = None  # the link's path: "direct", "punched", "relayed"; None when unlinked
    relay: str | None = None  # the member a relayed link goes through


@dataclass(frozen=True)
class Duty:
    """This node's part of someone else's split."""

    model: str
    host: str
    epoch: int
    layers: tuple[int, int]
    state: str
    port: int | None
    prefilled_files: int


@dataclass(frozen=True)
class DemandSnapshot:
    """Request rates per model, all-time totals, and who serves each model."""

    rates: Mapping[str, float] = field(default_factory=dict)
    totals: Mapping[str, int] = field(default_factory=dict)
    served: Mapping[str, list[str]] = field(default_factory=dict)
    wanted_min_rpm: float = 1.0


@dataclass(frozen=True)
class MeshSnapshot:
    """The mesh this node is in: its token and id, its port and QUIC engine, RPC bytes served."""

    invite_token: str
    mesh_id: str
    port: int
    quic: str
    peers: tuple[PeerSnapshot, ...] = ()
    rpc_from_host: int | None = None  # None: this node serves no RPC streams
    rpc_to_host: int | None = None
    nat: Mapping[str, Any] = field(default_factory=dict)  # this node's addresses and NAT kind
    relaying: int = 0  # paths this node relays for other members now
    relayed_bytes: int = 0  # bytes it relayed so far


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything `build_status` reads, taken at one instant (`now` on the wall clock,
    `monotonic` on the local clock that peers' `last_seen` uses)."""

    node_id: str
    started_at: float
    now: float
    monotonic: float
    state: str
    role: str
    client: bool
    api_host: str
    api_port: int | None
    api_auth: bool
    console_port: int | None
    capacity: Capacity
    models: tuple[LocalModel, ...] = ()
    waiting_splits: tuple[WaitingSplit, ...] = ()
    pending: tuple[tuple[str, PendingState], ...] = ()
    mesh: MeshSnapshot | None = None
    demand: DemandSnapshot = field(default_factory=DemandSnapshot)
    standby: str = "idle"
    declined: tuple[str, ...] = ()
    duties: tuple[Duty, ...] = ()
    in_flight: int = 0
    requests_total: int = 0
    discovery: Mapping[str, Any] | None = None


def _model_rows(snap: StatusSnapshot) -> list[dict[str, Any]]:
    rows = []
    for m in sorted(snap.models, key=lambda m: m.name):
        st = m.status
        rows.append(
            {
                "name": m.name,
                "state": st.state.value,
                "ready": st.state.value == "ready",
                "message": st.message,
                "port": None,  # kept for old readers: a model server has no TCP port, only `socket`
                "socket": st.socket,
                "pid": st.pid,
                "restarts": st.restarts,
                "since": st.since,
                "path": m.path,
                "size_bytes": m.size_bytes,
                "in_flight": m.in_flight,
                "requests": m.requests,
                "host": snap.node_id,
                "local": True,
                "slots": m.slots,
                "draft": m.draft,
                "draft_error": m.draft_error,
                "speculative": (m.slots or {}).get("speculative"),
                **(
                    m.split
                    if m.split is not None
                    else {"mode": "solo", "load_s": round(m.load_s, 2) if m.load_s is not None else None}
                ),
            }
        )
    for w in sorted(snap.waiting_splits, key=lambda w: w.name):  # split models waiting for their plan
        rows.append(
            {
                "name": w.name,
                "state": "waiting",
                "ready": False,
                "message": w.message,
                "port": None,
                "pid": None,
                "restarts": 0,
                "since": None,
                "path": w.path,
                "size_bytes": w.size_bytes,
                "in_flight": 0,
                "requests": w.requests,
                "host": snap.node_id,
                "local": True,
                **w.split,
            }
        )
    for peer in sorted(snap.mesh.peers if snap.mesh else (), key=lambda p: p.node_id):
        claims = peer_claims(peer.view.record.extra)
        for ad in peer.view.record.models:
            claim = claims.pop(ad.name, None) if ad.role == "host" else None
            state = "ready" if ad.ready else "loading"
            rows.append(
                _placeholder_row(ad.name, state, "", peer.node_id, local=False)
                | {
                    "ready": ad.ready,
                    "in_flight": ad.in_flight,
                    "requests": peer.routed.get(ad.name, 0),
                    "role": ad.role,
                    "layers": list(ad.layers) if ad.layers else None,
                    "slots": None if ad.free_slots is None else {"slots_free": ad.free_slots},
                    # A peer's split host publishes its plan (mode, epoch, shards); a host
                    # without one serves the model solo. Workers' rows carry their layers.
                    **(_claim_fields(claim) if claim else {"mode": "solo"} if ad.role == "host" else {}),
                }
            )
        for name, claim in sorted(claims.items()):  # split models that peer is still placing
            rows.append(
                _placeholder_row(name, "waiting", claim.state, peer.node_id, local=False)
                | {"role": "host", "layers": None, **_claim_fields(claim)}
            )
    for spec, pending in sorted(snap.pending):
        rows.append(_placeholder_row(spec, pending.kind, pending.text, snap.node_id, local=True))
    return rows


def _placeholder_row(name: str, state: str, message: str, host: str, *, local: bool) -> dict[str, Any]:
    """A model row with no local process and no traffic; callers add what they know."""
    return {
        "name": name,
        "state": state,
        "ready": False,
        "message": message,
        "port": None,
        "pid": None,
        "restarts": 0,
        "since": None,
        "path": None,
        "size_bytes": None,
        "in_flight": 0,
        "requests": 0,
        "host": host,
        "local": local,
        "slots": None,
    }


def _claim_fields(claim: PeerClaim) -> dict[str, Any]:
    """What a remote split host publishes about its plan, in the shape of a local split row."""
    return {
        "mode": claim.mode,
        "split_state": claim.state,
        "epoch": claim.epoch,
        "shards": [
            {"node_id": n, "start_layer": a, "end_layer": b, "bytes": None} for n, a, b in claim.shards
        ],
    }


def _peer_rows(snap: StatusSnapshot) -> list[dict[str, Any]]:
    rows = []
    for peer in sorted(snap.mesh.peers if snap.mesh else (), key=lambda p: p.node_id):
        view, rec = peer.view, peer.view.record
        rows.append(
            {
                "node_id": peer.node_id,
                "short_id": peer.node_id[:8],
                "role": rec.role,
                "state": view.status.value if view.connected else f"{view.status.value} (via gossip)",
                "connected": view.connected,
                "path": peer.path,
                "relay": peer.relay,
                "client": rec.client,
                "models": [m.to_dict() for m in rec.models],
                "on_disk": list(rec.on_disk),
                "capacity_bytes": rec.capacity_bytes,
                "rtt_ms": round(peer.rtt_ms, 2) if peer.rtt_ms is not None else None,
                "rtt_min_ms": round(peer.rtt_min_ms, 2) if peer.rtt_min_ms is not None else None,
                "version": rec.software,
                "last_seen_s": round(max(0.0, snap.monotonic - view.last_seen), 1),
                "addresses": list(rec.addresses),
                "api_port": rec.api_port,
                "demand": dict(rec.demand),
            }
        )
    return rows


def _demand_rows(demand: DemandSnapshot) -> list[dict[str, Any]]:
    rows = []
    for model in sorted(set(demand.rates) | set(demand.served)):
        rpm = demand.rates.get(model, 0.0)
        rows.append(
            {
                "model": model,
                "rpm": round(rpm, 2),
                "total": demand.totals.get(model, 0),
                "servers": sorted(demand.served.get(model, [])),
                "wanted": not demand.served.get(model) and rpm >= demand.wanted_min_rpm,
            }
        )
    return rows


def build_status(snap: StatusSnapshot) -> dict[str, Any]:
    """Everything a person or the console wants to know about the node at the snapshot's instant."""
    cap = snap.capacity
    mesh = snap.mesh
    api_host = "127.0.0.1" if snap.api_host == "0.0.0.0" else snap.api_host
    return {
        "node_id": snap.node_id,
        "short_id": snap.node_id[:8],
        "version": __version__,
        "state": snap.state,
        "role": snap.role,
        "client": snap.client,
        "started_at": snap.started_at,
        "uptime_s": round(snap.now - snap.started_at, 1),
        "api": {
            "host": snap.api_host,
            "port": snap.api_port,
            "url": f"http://{api_host}:{snap.api_port}/v1" if snap.api_port else None,
            "auth": snap.api_auth,
        },
        "console": {"port": snap.console_port},
        "capacity": {
            "kind": cap.kind,
            "device": cap.device,
            "total_bytes": cap.total_bytes,
            "offered_bytes": cap.offered_bytes,
            "used_bytes": sum(m.size_bytes for m in snap.models),
        },
        "ram": {"total_bytes": cap.ram_total_bytes, "available_bytes": cap.ram_available_bytes},
        "models": _model_rows(snap),
        "peers": _peer_rows(snap),
        "demand": _demand_rows(snap.demand),
        "standby": snap.standby if snap.role == "standby" else None,
        "declined": sorted(snap.declined),
        "worker_of": [
            {
                "model": d.model,
                "host": d.host,
                "epoch": d.epoch,
                "layers": list(d.layers),
                "state": d.state,
                "port": d.port,
                "prefilled_files": d.prefilled_files,
            }
            for d in snap.duties
        ],
        "rpc_bytes_served": (
            {"from_host": mesh.rpc_from_host, "to_host": mesh.rpc_to_host}
            if mesh is not None and mesh.rpc_from_host is not None
            else None
        ),
        "in_flight": snap.in_flight,
        "requests_total": snap.requests_total,
        "invite_token": mesh.invite_token if mesh is not None else None,
        "mesh_id": mesh.mesh_id if mesh is not None else None,
        "mesh_port": mesh.port if mesh is not None else None,
        "quic": mesh.quic if mesh is not None else None,
        "nat": dict(mesh.nat) if mesh is not None else None,
        "relay": {"paths": mesh.relaying, "bytes": mesh.relayed_bytes} if mesh is not None else None,
        "discovery": dict(snap.discovery) if snap.discovery is not None else None,
    }
