"""The node's status, frozen into a `StatusSnapshot` (see `status.py`), and its gauges.

Both read the node's components and its routing table; neither changes anything.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Protocol

from mesh_llm import __version__
from mesh_llm.api.proxy import Proxy
from mesh_llm.config import NodeConfig
from mesh_llm.metrics import Gauge
from mesh_llm.node._front import Front
from mesh_llm.node._membership import Membership
from mesh_llm.node._placement import Placement
from mesh_llm.node.status import (
    DemandSnapshot,
    Duty,
    LocalModel,
    MeshSnapshot,
    PeerSnapshot,
    StatusSnapshot,
    WaitingSplit,
    build_status,
)

log = logging.getLogger(__name__)

# The prefix cache's figures from /mesh/slots that /metrics shows.
PREFIX_CACHE_FIGURES = (
    "hits", "misses", "slot_hits", "ram_bytes", "disk_bytes", "ram_entries", "disk_entries",
    "restore_seconds_total", "restore_seconds_last", "save_seconds_total", "save_seconds_last",
    "disk_rejected",
)  # fmt: skip


class StatusParts(Protocol):
    """The node as its status sees it: its components and what it is doing."""

    config: NodeConfig
    node_id: str
    started_at: float
    capacity: Any
    placement: Placement
    membership: Membership
    front: Front
    api_port: int | None
    console_port: int | None

    @property
    def state(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def proxy(self) -> Proxy | None: ...


class NodeStatus:
    """The node's status snapshot and its `/metrics` gauges, read from `node`'s parts."""

    def __init__(self, node: StatusParts) -> None:
        self.node = node

    def status(self) -> dict[str, Any]:
        """The node's status as JSON-able data (served at /api/status and streamed on /api/events)."""
        return build_status(self.snapshot())

    def snapshot(self) -> StatusSnapshot:
        """What status shows, frozen at this instant: the one place status reads the node."""
        node = self.node
        serving, split, front, demand_table = (
            node.placement.serving,
            node.placement.split,
            node.front,
            node.placement.demand,
        )
        split_rows = split.host_rows()
        models = tuple(
            LocalModel(
                name, server.status(), str(server.model.path), server.model.size_bytes,
                front.in_flight[name], front.requests[name], server.slots, server.draft,
                server.draft_error, server.load_s, split_rows.pop(name, None),
            )
            for name, server in serving.servers.items()
        )  # fmt: skip
        waiting = tuple(
            WaitingSplit(name, *split.host_facts(name), front.requests[name], extra)
            for name, extra in split_rows.items()
        )
        mono = time.monotonic()
        served = {m: list(ids) for m, ids in front.table.served.items()}
        rates = demand_table.rates(mono)
        demand = DemandSnapshot(
            rates, {m: demand_table.total(m) for m in set(rates) | set(served)}, served,
            demand_table.config.wanted_min_rpm,
        )  # fmt: skip
        mesh = None
        mesh_service = node.membership.mesh
        if mesh_service is not None:
            transport = mesh_service.transport
            peers = tuple(
                PeerSnapshot(
                    node_id, view, mesh_service.rtt_ms(node_id), mesh_service.rtt_min_ms(node_id),
                    {m: n for (m, host), n in front.routed.items() if host == node_id},
                    link.path if (link := transport.link(node_id)) is not None and link.is_open else None,
                    link.relay if link is not None and link.is_open else None,
                )
                for node_id, view in mesh_service.peers().items()
            )  # fmt: skip
            rpc = mesh_service.rpc_counters
            mesh = MeshSnapshot(
                mesh_service.invite_token, mesh_service.credentials.mesh_id_hex, transport.port,
                transport.engine, peers,
                rpc.bytes_from_peer if rpc is not None else None, rpc.bytes_to_peer if rpc is not None else None,
                mesh_service.nat.view.to_dict(), transport.relays.relaying, transport.relays.relayed_bytes,
            )  # fmt: skip
        discovery = node.membership.discovery
        duties = tuple(Duty(*row) for row in split.duty_rows())
        return StatusSnapshot(
            node_id=node.node_id,
            started_at=node.started_at,
            now=time.time(),
            monotonic=mono,
            state=node.state,
            role=node.role,
            client=node.config.client,
            api_host=node.config.api.host,
            api_port=node.api_port,
            api_auth=node.config.api_key is not None,
            console_port=node.console_port,
            capacity=node.capacity,
            models=models,
            waiting_splits=waiting,
            pending=tuple(serving.pending.items()),
            mesh=mesh,
            demand=demand,
            standby=node.placement.standby.state.text,
            declined=tuple(serving.declined),
            duties=duties,
            in_flight=sum(front.in_flight.values()),
            requests_total=sum(front.requests.values()),
            discovery=discovery.status() if discovery is not None else None,
        )

    # ---- metrics -----------------------------------------------------------------------

    def metrics_text(self) -> str:
        """The `/metrics` page (Prometheus text format)."""
        from mesh_llm.metrics import RequestMetrics, render

        proxy = self.node.proxy
        return render(proxy.metrics if proxy else RequestMetrics(), self.gauges())

    def gauges(self) -> list[Gauge]:
        """What `/metrics` reads at scrape time: slots, queue, in-flight requests, peers, RTT."""
        node = self.node
        info = Gauge(
            "mesh_llm_node_info", "This node (always 1).",
            [({"node_id": node.node_id, "version": __version__, "role": node.role, "state": node.state}, 1)],
        )  # fmt: skip
        in_flight = Gauge(
            "mesh_llm_in_flight_requests", "Requests this node's API is answering now, by model.",
            [({"model": m}, n) for m, n in sorted(node.front.in_flight.items())],
        )  # fmt: skip
        slots: list[tuple[dict[str, str], float]] = []
        queued: list[tuple[dict[str, str], float]] = []
        prefix: list[tuple[dict[str, str], float]] = []
        for name, server in sorted(node.placement.serving.servers.items()):
            if server.slots is None or not server.ready:
                continue
            for state in ("busy", "free"):
                slots.append(({"model": name, "state": state}, float(server.slots.get(f"slots_{state}", 0))))
            queued.append(({"model": name}, float(server.slots.get("queued", 0))))
            cache = server.slots.get("prefix_cache")
            for key, value in cache.items() if isinstance(cache, dict) else ():
                if key in PREFIX_CACHE_FIGURES and isinstance(value, int | float):
                    prefix.append(({"model": name, "figure": key}, float(value)))
        peers: Counter[str] = Counter()
        paths: Counter[str] = Counter()
        relayed: list[tuple[dict[str, str], float]] = []
        rtts: list[tuple[dict[str, str], float]] = []
        mesh_service = node.membership.mesh
        if mesh_service is not None:
            for node_id, view in sorted(mesh_service.peers().items()):
                peers[view.status.value if view.connected else "gossip"] += 1
                rtt = mesh_service.rtt_ms(node_id)
                if rtt is not None:
                    rtts.append(({"peer": node_id[:8]}, rtt / 1000))
                link = mesh_service.transport.link(node_id)
                if link is not None and link.is_open:
                    paths[link.path] += 1
            relays = mesh_service.transport.relays
            relayed = [({}, float(relays.relayed_bytes))]
        return [
            info,
            in_flight,
            Gauge("mesh_llm_slots", "Request slots of this node's model servers, busy or free.", slots),
            Gauge("mesh_llm_queued_requests", "Requests waiting for a free slot, by model.", queued),
            Gauge(
                "mesh_llm_prefix_cache", "The KV prefix cache of each model server: hits, misses, "
                "bytes in RAM and on disk, restore seconds (see docs/models.md).", prefix,
            ),
            Gauge(
                "mesh_llm_peers", "Peers this node sees, by liveness (gossip: known only through others).",
                [({"state": s}, float(peers.get(s, 0))) for s in ("alive", "suspect", "gossip")],
            ),
            Gauge(
                "mesh_llm_peer_links", "Open links to peers, by path (direct, punched through NATs, relayed).",
                [({"path": p}, float(paths.get(p, 0))) for p in ("direct", "punched", "relayed")],
            ),
            Gauge(
                "mesh_llm_relayed_bytes_total", "Bytes this node relayed for other members, both ways.",
                relayed, kind="counter",
            ),
            Gauge("mesh_llm_peer_rtt_seconds", "Smoothed round-trip time to each linked peer.", rtts),
        ]  # fmt: skip
