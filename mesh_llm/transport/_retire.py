"""Retiring a link that a better path replaced: its open streams finish, then it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LINGER_S = 2.0  # a replaced link closes this long after its last stream ended


class Retirement:
    """Closes a replaced connection once its open streams ended (plus a linger for what it sent
    last to arrive), or after `grace` seconds, whichever comes first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, close: Callable[[], None], grace: float) -> None:
        self._loop = loop
        self._close = close
        self._timer = loop.call_later(grace, self._fire)

    def streams_left(self, count: int) -> None:
        """A stream ended; `count` remain open."""
        if not count:
            self._timer.cancel()
            self._timer = self._loop.call_later(LINGER_S, self._fire)

    def _fire(self) -> None:
        self._timer.cancel()
        self._close()
