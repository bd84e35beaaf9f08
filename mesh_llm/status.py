"""The node's status as plain JSON-able data: what /api/status, /api/events and `mesh-llm status` show."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mesh_llm import __version__
from mesh_llm.planning.records import PeerClaim, peer_claims

if TYPE_CHECKING:
    from mesh_llm.node import Node


def _model_rows(node: Node) -> list[dict[str, Any]]:
    rows = []
    split_rows = node.split.host_rows()
    for name, server in sorted(node.servers.items()):
        st = server.status()
        rows.append(
            {
                "name": name,
                "state": st.state.value,
                "ready": st.state.value == "ready",
                "message": st.message,
                "port": st.port,
                "pid": st.pid,
                "restarts": st.restarts,
                "since": st.since,
                "path": str(server.model.path),
                "size_bytes": server.model.size_bytes,
                "in_flight": node.in_flight[name],
                "requests": node.requests[name],
                "host": node.node_id,
                "local": True,
                "slots": server.slots,
                "draft": server.draft,
                "draft_error": server.draft_error,
                "speculative": (server.slots or {}).get("speculative"),
                **split_rows.pop(
                    name,
                    {
                        "mode": "solo",
                        "load_s": round(server.load_s, 2) if server.load_s is not None else None,
                    },
                ),
            }
        )
    for name, extra in sorted(split_rows.items()):  # split models still waiting for their plan
        host = node.split.hosts[name]
        rows.append(
            {
                "name": name,
                "state": "waiting",
                "ready": False,
                "message": host.state.text,
                "port": None,
                "pid": None,
                "restarts": 0,
                "since": None,
                "path": str(host.model.path),
                "size_bytes": host.model.size_bytes,
                "in_flight": 0,
                "requests": node.requests[name],
                "host": node.node_id,
                "local": True,
                **extra,
            }
        )
    if node.mesh is not None:
        for node_id, view in sorted(node.mesh.peers().items()):
            claims = peer_claims(view.record.extra)
            for ad in view.record.models:
                claim = claims.pop(ad.name, None) if ad.role == "host" else None
                state = "ready" if ad.ready else "loading"
                rows.append(
                    _placeholder_row(ad.name, state, "", node_id, local=False)
                    | {
                        "ready": ad.ready,
                        "in_flight": ad.in_flight,
                        "requests": node.routed[(ad.name, node_id)],
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
                    _placeholder_row(name, "waiting", claim.state, node_id, local=False)
                    | {"role": "host", "layers": None, **_claim_fields(claim)}
                )
    for spec, pending in node.pending.items():
        rows.append(_placeholder_row(spec, pending.kind, pending.text, node.node_id, local=True))
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


def _peer_rows(node: Node) -> list[dict[str, Any]]:
    if node.mesh is None:
        return []
    now = time.monotonic()
    rows = []
    for node_id, view in sorted(node.mesh.peers().items()):
        rec = view.record
        rtt = node.mesh.rtt_ms(node_id)
        rtt_min = node.mesh.rtt_min_ms(node_id)
        rows.append(
            {
                "node_id": node_id,
                "short_id": node_id[:8],
                "role": rec.role,
                "state": view.status.value if view.connected else f"{view.status.value} (relayed)",
                "connected": view.connected,
                "client": rec.client,
                "models": [m.to_dict() for m in rec.models],
                "on_disk": list(rec.on_disk),
                "capacity_bytes": rec.capacity_bytes,
                "rtt_ms": round(rtt, 2) if rtt is not None else None,
                "rtt_min_ms": round(rtt_min, 2) if rtt_min is not None else None,
                "version": rec.software,
                "last_seen_s": round(max(0.0, now - view.last_seen), 1),
                "addresses": list(rec.addresses),
                "api_port": rec.api_port,
                "demand": dict(rec.demand),
            }
        )
    return rows


def _demand_rows(node: Node) -> list[dict[str, Any]]:
    now = time.monotonic()
    served = node._served_map()
    rates = node.demand.rates(now)
    rows = []
    for model in sorted(set(rates) | set(served)):
        rpm = rates.get(model, 0.0)
        rows.append(
            {
                "model": model,
                "rpm": round(rpm, 2),
                "total": node.demand.total(model),
                "servers": sorted(served.get(model, [])),
                "wanted": not served.get(model) and rpm >= node.demand.config.wanted_min_rpm,
            }
        )
    return rows


def build_status(node: Node) -> dict[str, Any]:
    """Everything a person or the console wants to know about this node right now."""
    cap = node.capacity
    used = sum(s.model.size_bytes for s in node.servers.values())
    api_host = node.config.api.host
    return {
        "node_id": node.node_id,
        "short_id": node.node_id[:8],
        "version": __version__,
        "state": node.state,
        "role": node.role,
        "client": node.config.client,
        "started_at": node.started_at,
        "uptime_s": round(time.time() - node.started_at, 1),
        "api": {
            "host": api_host,
            "port": node.api_port,
            "url": f"http://{'127.0.0.1' if api_host == '0.0.0.0' else api_host}:{node.api_port}/v1"
            if node.api_port
            else None,
            "auth": node.config.api_key is not None,
        },
        "console": {"port": node.console_port},
        "capacity": {
            "kind": cap.kind,
            "device": cap.device,
            "total_bytes": cap.total_bytes,
            "offered_bytes": cap.offered_bytes,
            "used_bytes": used,
        },
        "ram": {"total_bytes": cap.ram_total_bytes, "available_bytes": cap.ram_available_bytes},
        "models": _model_rows(node),
        "peers": _peer_rows(node),
        "demand": _demand_rows(node),
        "standby": node.standby_state if node.role == "standby" else None,
        "declined": sorted(node.declined),
        "worker_of": [
            {
                "model": d.model,
                "host": d.host,
                "epoch": d.epoch,
                "layers": list(d.layers),
                "state": d.worker.state.value,
                "port": d.worker.port,
                "prefilled_files": len(d.cache_files),
            }
            for d in node.split.duties.values()
        ],
        "rpc_bytes_served": (
            {
                "from_host": node.mesh.rpc_counters.bytes_from_peer,
                "to_host": node.mesh.rpc_counters.bytes_to_peer,
            }
            if node.mesh is not None and node.mesh.rpc_counters is not None
            else None
        ),
        "in_flight": sum(node.in_flight.values()),
        "requests_total": sum(node.requests.values()),
        "invite_token": node.mesh.invite_token if node.mesh is not None else None,
        "mesh_id": node.mesh.credentials.mesh_id_hex if node.mesh is not None else None,
        "mesh_port": node.mesh.transport.port if node.mesh is not None else None,
        "quic": node.mesh.transport.engine if node.mesh is not None else None,
        "discovery": node.discovery.status() if node.discovery is not None else None,
    }
