"""Front: the node as the proxy sees it (`ServingView`), reading the routing table, and its traffic."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mesh_llm.api.console import ChangeFeed
from mesh_llm.api.prefix import PrefixMemory
from mesh_llm.api.routing import Endpoint, model_key
from mesh_llm.api.upstream import Upstream
from mesh_llm.errors import BackendUnavailable
from mesh_llm.mesh.http_transport import BASE_URL
from mesh_llm.models.catalog import find_entry
from mesh_llm.node._membership import Membership
from mesh_llm.node._placement import Placement
from mesh_llm.node.routing import RoutingTable


class Front:
    """Owns the routing table the proxy reads and the request counters; plans nothing itself.

    `refresh` derives the table again (the node's one place that does); the front calls it
    only when a request names a model the table has not seen wanted yet.
    """

    def __init__(
        self, placement: Placement, membership: Membership, feed: ChangeFeed, refresh: Callable[[], None]
    ) -> None:
        self._placement = placement
        self._membership = membership
        self._feed = feed
        self._refresh = refresh
        self.table = RoutingTable()
        self.in_flight: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.routed: Counter[tuple[str, str]] = Counter()  # (model, host node id) -> requests sent there
        self.prefixes = PrefixMemory()  # which host got each conversation's latest turn

    # ---- ServingView ---------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        return list(self.table.endpoints)

    def model_cards(self) -> list[dict[str, Any]]:
        return [dict(card) for card in self.table.cards]

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        self.routed[(endpoint.model, endpoint.node_id)] += 1
        if endpoint.local:
            server = self._placement.serving.servers.get(endpoint.model)
            if server is None or not server.ready:
                raise BackendUnavailable(f"the model server of {endpoint.model} is not ready")
            return Upstream(server.base_url, server.transport)  # its Unix socket
        mesh = self._membership.mesh
        if mesh is None:
            raise BackendUnavailable("this node is not in a mesh")
        return Upstream(BASE_URL, await mesh.http_transport(endpoint.node_id, endpoint.model))

    def note_request(self, model: str) -> None:
        """Count demand for a model the mesh knows or could load, served or not (wanted).

        A model the table neither serves nor holds wanted is new demand: the table is derived
        again, so a standby can be named for it from its first request.
        """
        name = self._canonical(model)
        if name is None:
            return
        self._placement.demand.record(name, time.monotonic())
        if name not in self.table.served and name not in self.table.wanted:
            self._refresh()

    def begin_request(self, model: str) -> Callable[[], None]:
        self.in_flight[model] += 1
        self.requests[model] += 1
        self.table = self.table.with_load(self.in_flight)
        self._feed.bump()
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight[model] -= 1
                self.table = self.table.with_load(self.in_flight)
                self._feed.bump()

        return finish

    def note_prefix(self, endpoint: Endpoint, digest: str) -> None:
        self.prefixes.record(endpoint.model, endpoint.node_id, digest)
        self.table = self.table.with_routed(endpoint.model, endpoint.node_id, digest)

    def mesh_problem(self) -> str | None:
        return self._membership.mesh_problem()

    def _canonical(self, model: str) -> str | None:
        key = model_key(model)
        serving = self._placement.serving
        names = set(serving.servers) | set(self.table.known) | set(serving.on_disk)
        mesh = self._membership.mesh
        if mesh is not None:
            for view in mesh.peers().values():
                names.update(ad.name for ad in view.record.models)
                names.update(view.record.on_disk)
        for name in names:
            if model_key(name) == key:
                return name
        entry = find_entry(model)
        return entry.name if entry is not None else None
