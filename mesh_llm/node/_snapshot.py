"""The node's status, frozen into a `StatusSnapshot` (see `status.py`), and its gauges."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from mesh_llm import __version__
from mesh_llm.metrics import Gauge
from mesh_llm.node._serving import NodeServingView
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


class NodeStatus(NodeServingView):
    """The node's status snapshot and its `/metrics` gauges."""

    def status(self) -> dict[str, Any]:
        """The node's status as JSON-able data (served at /api/status and streamed on /api/events)."""
        return build_status(self.status_snapshot())

    def status_snapshot(self) -> StatusSnapshot:
        """What status shows, frozen at this instant: the one place status reads the node."""
        split_rows = self.split.host_rows()
        models = tuple(
            LocalModel(
                name, server.status(), str(server.model.path), server.model.size_bytes,
                self.in_flight[name], self.requests[name], server.slots, server.draft,
                server.draft_error, server.load_s, split_rows.pop(name, None),
            )
            for name, server in self.servers.items()
        )  # fmt: skip
        waiting = tuple(
            WaitingSplit(name, *self.split.host_facts(name), self.requests[name], extra)
            for name, extra in split_rows.items()
        )
        mono = time.monotonic()
        served = self._served_map()
        rates = self.demand.rates(mono)
        demand = DemandSnapshot(
            rates, {m: self.demand.total(m) for m in set(rates) | set(served)}, served,
            self.demand.config.wanted_min_rpm,
        )  # fmt: skip
        mesh = None
        if self.mesh is not None:
            peers = tuple(
                PeerSnapshot(
                    node_id, view, self.mesh.rtt_ms(node_id), self.mesh.rtt_min_ms(node_id),
                    {m: n for (m, host), n in self.routed.items() if host == node_id},
                )
                for node_id, view in self.mesh.peers().items()
            )  # fmt: skip
            rpc = self.mesh.rpc_counters
            mesh = MeshSnapshot(
                self.mesh.invite_token, self.mesh.credentials.mesh_id_hex, self.mesh.transport.port,
                self.mesh.transport.engine, peers,
                rpc.bytes_from_peer if rpc is not None else None, rpc.bytes_to_peer if rpc is not None else None,
            )  # fmt: skip
        duties = tuple(Duty(*row) for row in self.split.duty_rows())
        return StatusSnapshot(
            node_id=self.node_id,
            started_at=self.started_at,
            now=time.time(),
            monotonic=mono,
            state=self.state,
            role=self.role,
            client=self.config.client,
            api_host=self.config.api.host,
            api_port=self.api_port,
            api_auth=self.config.api_key is not None,
            console_port=self.console_port,
            capacity=self.capacity,
            models=models,
            waiting_splits=waiting,
            pending=tuple(self.pending.items()),
            mesh=mesh,
            demand=demand,
            standby=self.standby.state.text,
            declined=tuple(self.declined),
            duties=duties,
            in_flight=sum(self.in_flight.values()),
            requests_total=sum(self.requests.values()),
            discovery=self.discovery.status() if self.discovery is not None else None,
        )

    # ---- metrics -----------------------------------------------------------------------

    def metrics_text(self) -> str:
        """The `/metrics` page (Prometheus text format)."""
        from mesh_llm.metrics import RequestMetrics, render

        return render(self._proxy.metrics if self._proxy else RequestMetrics(), self.gauges())

    def gauges(self) -> list[Gauge]:
        """What `/metrics` reads at scrape time: slots, queue, in-flight requests, peers, RTT."""
        info = Gauge(
            "mesh_llm_node_info", "This node (always 1).",
            [({"node_id": self.node_id, "version": __version__, "role": self.role, "state": self.state}, 1)],
        )  # fmt: skip
        in_flight = Gauge(
            "mesh_llm_in_flight_requests", "Requests this node's API is answering now, by model.",
            [({"model": m}, n) for m, n in sorted(self.in_flight.items())],
        )  # fmt: skip
        slots: list[tuple[dict[str, str], float]] = []
        queued: list[tuple[dict[str, str], float]] = []
        for name, server in sorted(self.servers.items()):
            if server.slots is None or not server.ready:
                continue
            for state in ("busy", "free"):
                slots.append(({"model": name, "state": state}, float(server.slots.get(f"slots_{state}", 0))))
            queued.append(({"model": name}, float(server.slots.get("queued", 0))))
        peers: Counter[str] = Counter()
        rtts: list[tuple[dict[str, str], float]] = []
        if self.mesh is not None:
            for node_id, view in sorted(self.mesh.peers().items()):
                peers[view.status.value if view.connected else "relayed"] += 1
                rtt = self.mesh.rtt_ms(node_id)
                if rtt is not None:
                    rtts.append(({"peer": node_id[:8]}, rtt / 1000))
        return [
            info,
            in_flight,
            Gauge("mesh_llm_slots", "Request slots of this node's model servers, busy or free.", slots),
            Gauge("mesh_llm_queued_requests", "Requests waiting for a free slot, by model.", queued),
            Gauge(
                "mesh_llm_peers", "Peers this node sees, by liveness.",
                [({"state": s}, float(peers.get(s, 0))) for s in ("alive", "suspect", "relayed")],
            ),
            Gauge("mesh_llm_peer_rtt_seconds", "Smoothed round-trip time to each linked peer.", rtts),
        ]  # fmt: skip
