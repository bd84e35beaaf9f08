"""A UDP relay that holds every datagram for a while: a slower network path on one machine.

    python -m benchmarks.udp_delay --to 127.0.0.1:PORT --delay-ms 5

Prints the port it listens on (one JSON line), then forwards each client's datagrams to the
target from a socket of its own (so the target sees one peer per client) and the answers back,
each direction held `--delay-ms`. This kernel has no `tc netem`; this is the stand-in. Exits when
its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: _Relay, client: Any) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.later(lambda: self.relay.send_back(data, self.client))


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.upstreams: dict[Any, _Upstream] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def later(self, send: Any) -> None:
        self.loop.call_later(self.delay, send)

    def send_back(self, data: bytes, client: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, client)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        up = self.upstreams.get(addr)
        if up is None:
            up = _Upstream(self, addr)
            self.upstreams[addr] = up
            self.loop.create_task(self._open(up))
        self.later(lambda: up.transport.sendto(data, self.target) if up.transport else None)

    async def _open(self, up: _Upstream) -> None:
        await self.loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))


async def main_async(args: argparse.Namespace) -> None:
    host, _, port = args.to.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Relay((host, int(port)), args.delay_ms / 1000), local_addr=("127.0.0.1", 0)
    )
    print(json.dumps({"port": transport.get_extra_info("sockname")[1]}), flush=True)
    await asyncio.to_thread(sys.stdin.read)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True, help="host:port to forward to")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="added in each direction")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
