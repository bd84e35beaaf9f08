"""Connection limits for the node's uvicorn servers: a header deadline and a per-client cap.

uvicorn bounds idle keep-alive connections but not a client that sends its request headers
slowly (slowloris), and it has only a global concurrency limit. `limited_protocol` wraps its
HTTP protocol class: a connection must complete each request's headers within
`header_timeout_s` of opening (or of its previous response), and one client address may hold
at most `max_per_client` connections; more are closed at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_CLIENT = 64


def limited_protocol(
    base: type[Any],
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol class `base` with both limits."""
    open_by_client: Counter[str] = Counter()

    class Limited(base):
        _client = ""
        _counted = False
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            if open_by_client[self._client] >= max_per_client:
                transport.close()
                return
            open_by_client[self._client] += 1
            self._counted = True
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                open_by_client[self._client] -= 1
                if open_by_client[self._client] <= 0:
                    del open_by_client[self._client]
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            waiting_after = self.cycle  # a new request replaces the cycle once its headers are in
            self._deadline = asyncio.get_running_loop().call_later(
                header_timeout_s, self._expire, waiting_after
            )

        def _expire(self, waiting_after: Any) -> None:
            running = waiting_after is not None and not getattr(waiting_after, "response_complete", True)
            if self.cycle is waiting_after and not running and not self.transport.is_closing():
                self.transport.close()

    Limited.__name__ = f"Limited{base.__name__}"
    return Limited
