"""Connection limits for the node's uvicorn servers: a header deadline and per-client caps.

uvicorn bounds idle keep-alive connections but not a client that sends its request headers
slowly (slowloris), and it has only a global concurrency limit. `limited_protocol` wraps its
HTTP protocol class: a connection must complete each request's headers within
`header_timeout_s` of opening (or of its previous response), and connections are capped by
group. One remote address may hold at most `max_per_client`; everything on loopback is one
group with its own, larger bound `max_loopback`, because every local program shares
127.0.0.1 and one of them must not lock the others out. When a group is full, its oldest idle
connection (no request running) is closed to make room; only a group whose connections all
have a request running refuses the newcomer.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_CLIENT = 64
MAX_LOOPBACK_CONNECTIONS = 512

_LOOPBACK_GROUP = "loopback"


def client_group(address: str) -> str:
    """The group a client address counts against: loopback as one, any other address alone."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return _LOOPBACK_GROUP if ip.is_loopback else address


def limited_protocol(
    base: type[Any],
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    max_loopback: int = MAX_LOOPBACK_CONNECTIONS,
) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol class `base` with the header deadline and the caps."""
    # Each group's connections, oldest first (dicts keep insertion order).
    open_by_group: dict[str, dict[Any, None]] = {}

    class Limited(base):
        _group = ""
        _counted = False
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._group = client_group(str(peer[0]) if isinstance(peer, tuple) and peer else "")
            members = open_by_group.setdefault(self._group, {})
            cap = max_loopback if self._group == _LOOPBACK_GROUP else max_per_client
            if len(members) >= cap and not self._evict_idle(members):
                if not members:
                    del open_by_group[self._group]
                transport.close()
                return
            members[self] = None
            self._counted = True
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._uncount()
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        @property
        def _idle(self) -> bool:
            return self.cycle is None or bool(getattr(self.cycle, "response_complete", True))

        def _evict_idle(self, members: dict[Any, None]) -> bool:
            """Close the group's oldest idle connection; False if every one has a request running."""
            for other in members:
                if other._idle:
                    other._uncount()
                    other.transport.close()
                    return True
            return False

        def _uncount(self) -> None:
            if not self._counted:
                return
            self._counted = False
            members = open_by_group.get(self._group, {})
            members.pop(self, None)
            if not members:
                open_by_group.pop(self._group, None)

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
