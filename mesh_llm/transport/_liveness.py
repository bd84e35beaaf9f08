"""Pings on a connection: the keepalive, RTT samples from pongs, and on-demand probes.

A `_ping` every `keepalive_interval` keeps the connection busy and feeds the RTT estimator; a
pong says how long the ping waited at the peer, which is taken out of the sample.

`silent_for` says how long the peer has left a ping unanswered. Pings leave as soon as they are
queued and pongs are stamped when their datagram arrived, so a peer that stopped (frozen, or its
machine gone) shows as silent within seconds even while its QUIC connection stays open and the
gossip heartbeats, which wait behind the load, still look fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from mesh_llm.errors import TransportError
from mesh_llm.peer.rtt import RttEstimator
from mesh_llm.peer.wire import TYPE_FIELD
from mesh_llm.transport._streams import fresh, wake

MAX_OUTSTANDING_PINGS = 16


class Liveness:
    """The pings of one connection: `send_control` queues a message, `transmit` sends it now."""

    def __init__(
        self,
        send_control: Callable[[Mapping[str, Any]], None],
        transmit: Callable[[], None],
        *,
        interval: float,
    ) -> None:
        self._send_control = send_control
        self._transmit = transmit
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self.rtt = RttEstimator()
        self._seq = 0
        self._pings: dict[int, float] = {}
        self._heard_at = self._loop.time()  # when the last pong arrived (or the link began)
        self._probes: dict[int, asyncio.Future[None]] = {}
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def probing(self) -> bool:
        """Whether a probe is waiting for its pong."""
        return bool(self._probes)

    def start(self, name: str) -> None:
        """Start the keepalive, and take a first RTT sample within one round trip."""
        self._keepalive = self._loop.create_task(self._keep_alive(), name=name)
        self.ping()

    def stop(self, exc: TransportError) -> None:
        """The connection ended: fail waiting probes with `exc`, stop the keepalive."""
        for waiter in self._probes.values():
            if not waiter.done():
                waiter.set_exception(fresh(exc))
        if self._keepalive is not None:
            self._keepalive.cancel()

    def ping(self) -> int:
        self._seq += 1
        while len(self._pings) >= MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        with contextlib.suppress(TransportError):
            self._send_control({TYPE_FIELD: "_ping", "n": self._seq})
            self._transmit()  # out now, and stamped as it leaves: queueing is not network time
        self._pings[self._seq] = self._loop.time()
        return self._seq

    async def probe(self, timeout: float) -> bool:
        """True if the peer answers a ping within `timeout`."""
        seq = self.ping()
        waiter = self._loop.create_future()
        self._probes[seq] = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, TransportError):
            return False
        finally:
            self._probes.pop(seq, None)
        return True

    def silent_for(self) -> float:
        """Seconds the oldest ping sent since the last pong has waited for its answer (0: none
        waits). Pings older than the last pong were lost, not unanswered: they do not count."""
        waiting = [sent for sent in self._pings.values() if sent > self._heard_at]
        return max(0.0, self._loop.time() - min(waiting)) if waiting else 0.0

    def on_pong(self, msg: Mapping[str, Any], arrival: float) -> None:
        """A pong whose datagram arrived at `arrival` (not when its burst got processed)."""
        seq, held = msg.get("n"), msg.get("h", 0.0)
        if isinstance(seq, int) and (sent := self._pings.pop(seq, None)) is not None:
            self._heard_at = max(self._heard_at, arrival)
            held = float(held) if isinstance(held, int | float) and 0 <= held < 10 else 0.0
            self.rtt.sample(arrival - sent - held, self._loop.time())
            wake(self._probes.get(seq))

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.ping()
