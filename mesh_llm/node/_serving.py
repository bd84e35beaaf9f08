"""What the proxy sees of the node: endpoints, model cards, where a request goes, demand."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mesh_llm.api.routing import Endpoint, model_key
from mesh_llm.api.upstream import Upstream
from mesh_llm.errors import BackendUnavailable
from mesh_llm.mesh.gossip import PeerStatus
from mesh_llm.mesh.http_transport import BASE_URL
from mesh_llm.models.catalog import CATALOG, find_entry
from mesh_llm.node._base import NodeCore
from mesh_llm.planning.claims import peer_claims, peer_declined
from mesh_llm.planning.demand import StandbyInfo, assign_standby_work
from mesh_llm.serving.backend import ModelServer
from mesh_llm.states import Failed

log = logging.getLogger(__name__)
UNREACHABLE = "unreachable"  # a remote host's state once its peer is lost or not alive


class NodeServingView(NodeCore):
    """The node as the proxy sees it (`ServingView`): endpoints, model cards, routing, demand."""

    def endpoints(self) -> list[Endpoint]:
        out = []
        for name, server in self.servers.items():
            out.append(
                Endpoint(
                    model=name,
                    node_id=self.node_id,
                    ready=server.ready,
                    in_flight=self.in_flight[name],
                    local=True,
                    free_slots=self._local_free_slots(server),
                    state=server.status().state.value,
                )
            )
        for name, split_host in self.split.hosts.items():
            if name not in self.servers:
                out.append(Endpoint(name, self.node_id, False, local=True, state=split_host.state.text))
        out += self._asked_not_started({e.model for e in out})
        if self.mesh is not None:
            for node_id, view in sorted(self.mesh.peers().items()):
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
                        )
                    )
                hosted = {ad.name for ad in view.record.models if ad.role == "host"}
                for name, claim in peer_claims(view.record.extra).items():
                    if name not in hosted:  # a split still being placed there: say what it waits for
                        out.append(
                            Endpoint(name, node_id, False, local=False, state=claim.state or claim.mode)
                        )
        for name in self.split.wants:
            if not any(e.model == name for e in out):
                out.append(Endpoint(name, "", False, state="electing a host for it in the mesh"))
        now = time.monotonic()
        for e in out:
            self.known_models[e.model] = now
        served = {e.model for e in out}
        wanted = set(self.demand.wanted({m: [m] for m in served}, now)) | self.demand.recent(now)
        if wanted - served:
            taker = self._standby_assignment({m: [m] for m in served}, now)
            for model in sorted(wanted - served):
                if model in taker:
                    served.add(model)
                    self.known_models[model] = now
                    state = f"standby node {taker[model][:8]} is about to load it"
                    out.append(Endpoint(model, "", False, state=state))
        for model, seen in list(self.known_models.items()):
            if now - seen > self.config.timing.known_model_memory_s:
                del self.known_models[model]
            elif model not in served:
                # Fail clearly rather than with a 404: the model was here and may come back.
                out.append(Endpoint(model, "", False, state=self._unserved_reason(model)))
        return out

    def _asked_not_started(self, listed: set[str]) -> list[Endpoint]:
        """The --model models with no model server yet: not ready (a 503), never unknown (a 404).

        From the moment the API port opens until each has a server, a split host or a failure.
        """
        out = []
        for spec, name in self.asked.items():
            state = self.pending.get(spec)
            if name in listed or name in self.declined or isinstance(state, Failed):
                continue
            listed.add(name)
            out.append(
                Endpoint(name, self.node_id, False, local=True, state=state.text if state else "starting")
            )
        return out

    def _standby_assignment(self, served: dict[str, list[str]], now: float) -> dict[str, str]:
        """Model -> the standby the mesh-wide rules give it now (what every node computes)."""
        decisions = assign_standby_work(
            self._standbys(), served, self.demand.rates(now), self._model_sizes(),
            recent=self.demand.recent(now), config=self.config.demand,
        )  # fmt: skip
        return {d.model: node_id for node_id, d in decisions.items()}

    def _unserved_reason(self, model: str) -> str:
        """What is happening to a known model nobody serves, and what the user can do."""
        decliners = sorted(
            [self.node_id[:8]] * (model in self.declined)
            + [
                node_id[:8]
                for node_id, view in (self.mesh.peers().items() if self.mesh is not None else ())
                if model in peer_declined(view.record.extra)
            ]
        )
        why = "no node in the mesh serves it right now and no standby node can take it"
        if decliners:
            why += f" (dropped with `mesh-llm drop` on {', '.join(decliners)})"
        return f"offline: {why}; start a node with `mesh-llm --model {model} --join <token>` to serve it"

    def model_cards(self) -> list[dict[str, Any]]:
        by_model: dict[str, list[Endpoint]] = {}
        for e in self.endpoints():
            if e.node_id:
                by_model.setdefault(e.model, []).append(e)
        return [
            {
                "id": model,
                "object": "model",
                "created": int(self.started_at),
                "owned_by": "mesh-llm",
                "ready": any(e.ready for e in eps),
                "hosts": sorted(e.node_id[:8] for e in eps),
            }
            for model, eps in sorted(by_model.items())
        ]

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        self.routed[(endpoint.model, endpoint.node_id)] += 1
        if endpoint.local:
            server = self.servers.get(endpoint.model)
            if server is None or not server.ready:
                raise BackendUnavailable(f"the model server of {endpoint.model} is not ready")
            return Upstream(server.base_url)
        if self.mesh is None:
            raise BackendUnavailable("this node is not in a mesh")
        return Upstream(BASE_URL, await self.mesh.http_transport(endpoint.node_id, endpoint.model))

    def local_model_port(self, model: str) -> int | None:
        """Where a peer's HTTP tunnel for `model` lands: our ready model server, else refuse."""
        server = self.servers.get(model)
        return server.port if server is not None and server.ready else None

    def note_request(self, model: str) -> None:
        """Count demand for a model the mesh knows or could load, served or not (wanted)."""
        name = self._canonical(model)
        if name is not None:
            self.demand.record(name, time.monotonic())

    def _canonical(self, model: str) -> str | None:
        key = model_key(model)
        names = set(self.servers) | set(self.known_models) | set(self.on_disk)
        if self.mesh is not None:
            for view in self.mesh.peers().values():
                names.update(ad.name for ad in view.record.models)
                names.update(view.record.on_disk)
        for name in names:
            if model_key(name) == key:
                return name
        entry = find_entry(model)
        return entry.name if entry is not None else None

    def _standbys(self) -> list[StandbyInfo]:
        out = []
        if self.role == "standby":
            out.append(
                StandbyInfo(
                    self.node_id,
                    self.capacity.offered_bytes,
                    frozenset(self.on_disk),
                    self.config.allow_download,
                    declined=frozenset(self.declined),
                )
            )
        if self.mesh is not None:
            for node_id, view in self.mesh.peers().items():
                rec = view.record
                if rec.role == "standby" and not rec.client:
                    out.append(
                        StandbyInfo(
                            node_id, rec.capacity_bytes, frozenset(rec.on_disk), True,
                            declined=peer_declined(rec.extra),
                        )
                    )  # fmt: skip
        return out

    def _local_free_slots(self, server: ModelServer) -> int | None:
        """Free slots now: the engine's count at its last check, less requests sent since."""
        if server.free_slots is None:
            return None
        return max(0, self.config.backend.n_parallel - self.in_flight[server.name])

    def _served_map(self) -> dict[str, list[str]]:
        served: dict[str, list[str]] = {}
        for e in self.endpoints():
            # A host we lost (died, unreachable) serves nothing: its model is unserved, not hot.
            if e.node_id and e.state != UNREACHABLE:
                served.setdefault(e.model, []).append(e.node_id)
        return served

    def _model_sizes(self) -> dict[str, int]:
        sizes = {e.name: e.size_bytes for e in CATALOG}
        sizes.update({name: m.size_bytes for name, m in self.resolved.items()})
        return sizes

    def begin_request(self, model: str) -> Callable[[], None]:
        self.in_flight[model] += 1
        self.requests[model] += 1
        self.feed.bump()
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight[model] -= 1
                self.feed.bump()

        return finish

    def mesh_problem(self) -> str | None:
        if self.mesh is None or not self.tokens or self.mesh.peers():
            return None
        return self.mesh.join_problem or "still dialling the inviter of its --join token"
