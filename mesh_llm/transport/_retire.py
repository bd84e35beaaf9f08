"""Retiring a link that a better path replaced: its open streams finish, then it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LINGER_S = 2.0  # a replaced link closes this long after its last stream ended


class Retirement:
    """Closes a replaced connection once its open streams ended (plus a linger for what it sent
    last to arrive), or after `grace` seconds if given, whichever comes first. A split's RPC
    stream lasts as long as the split: with no grace, it keeps its path until it ends."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, close: Callable[[], None], grace: float | None
    ) -> None:
        self._loop = loop
        self._close = close
        self._timer = loop.call_later(grace, self._fire) if grace is not None else None

    def streams_left(self, count: int) -> None:
        """A stream ended; `count` remain open."""
        if not count:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(LINGER_S, self._fire)

    def _fire(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._close()
