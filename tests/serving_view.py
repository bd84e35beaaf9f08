"""A ServingView with one host of model `m`, for tests that drive the real Proxy without a node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from mesh_llm.api.routing import Endpoint
from mesh_llm.api.upstream import Upstream


class OneHost:
    """The proxy's view of a mesh where model `m` has one ready host, at `url`.

    With `transport` the host is a peer reached through it (over the mesh); without, it is this
    node's own model server. `cards` replaces the model list (a test can make it raise).
    """

    def __init__(
        self,
        url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cards: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.url = url
        self.transport = transport
        self._cards = cards or (lambda: [{"id": "m", "object": "model"}])

    def endpoints(self) -> list[Endpoint]:
        if self.transport is not None:
            return [Endpoint("m", "node-b", ready=True)]
        return [Endpoint("m", "node-a", ready=True, local=True)]

    def model_cards(self) -> list[dict[str, Any]]:
        return self._cards()

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        return Upstream(self.url, self.transport)

    def note_request(self, model: str) -> None:
        pass

    def begin_request(self, model: str) -> Callable[[], None]:
        return lambda: None

    def note_prefix(self, endpoint: Endpoint, digest: str) -> None:
        pass

    def mesh_problem(self) -> str | None:
        return None
