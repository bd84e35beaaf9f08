"""A UDP relay that delays every datagram: a stand-in for a slow link (this kernel has no netem).

Real QUIC measures a real RTT through it. Runs its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class _Upstream(asyncio.DatagramProtocol):
    """One socket per client address, towards the target; answers go back delayed."""

    def __init__(self, relay: DelayRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.later(lambda: self.relay.downstream_send(data, self.client))


class _Downstream(asyncio.DatagramProtocol):
    def __init__(self, relay: DelayRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.from_client(data, addr)


class DelayRelay:
    """Listen on 127.0.0.1:`port`; forward to `target` and back, each way delayed by `delay_s`."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._down: asyncio.DatagramTransport | None = None
        self._ups: dict[tuple[str, int], _Upstream] = {}

    def start(self) -> DelayRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(5)
        return self

    async def _open(self) -> None:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Downstream(self), local_addr=("127.0.0.1", 0)
        )
        self._down = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def later(self, action: Any) -> None:
        self._loop.call_later(self.delay_s, action)

    def downstream_send(self, data: bytes, client: tuple[str, int]) -> None:
        if self._down is not None:
            self._down.sendto(data, client)

    def from_client(self, data: bytes, client: tuple[str, int]) -> None:
        up = self._ups.get(client)
        if up is None:
            up = _Upstream(self, client)
            self._ups[client] = up
            self._loop.create_task(
                self._loop.create_datagram_endpoint(lambda: up, remote_addr=self.target)  # type: ignore[arg-type, return-value]
            )

        def send() -> None:
            if up.transport is not None:
                up.transport.sendto(data)

        self.later(send)

    def stop(self) -> None:
        def close() -> None:
            if self._down is not None:
                self._down.close()
            for up in self._ups.values():
                if up.transport is not None:
                    up.transport.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)
