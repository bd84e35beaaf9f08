"""What a connection holds until authentication ends, and how much of it it will hold.

Control messages that arrive before READY wait here for the handshake to read them in order
(`next_message`); at most `MAX_PENDING_MESSAGES`. A dialer waiting for the listener's proof may
also see the listener's first streams overtake that proof on the wire: their events wait here too,
up to four stream windows of data, and are replayed once the link is ready.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

# Control messages a peer may send before authentication ends; more closes the connection.
MAX_PENDING_MESSAGES = 256


class BeforeReady:
    """The authentication inbox and the streams held early, of one connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream_window: int) -> None:
        self._loop = loop
        self._stream_window = stream_window
        self._messages: deque[dict[str, Any]] = deque()
        self._arrived = asyncio.Event()
        self._events: list[Any] = []
        self._event_bytes = 0

    def add_message(self, msg: dict[str, Any]) -> bool:
        """Keep a control message for the handshake; False when the peer sent too many."""
        if len(self._messages) >= MAX_PENDING_MESSAGES:
            return False
        self._messages.append(msg)
        self._arrived.set()
        return True

    async def next_message(self, deadline: float, check_open: Callable[[], None]) -> dict[str, Any]:
        """The next message kept; TimeoutError at `deadline`, or whatever `check_open` raises."""
        while not self._messages:
            check_open()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), remaining)
        return self._messages.popleft()

    def hold_event(self, event: Any, size: int) -> bool:
        """Keep a stream event for replay; False when the peer sent too much data early."""
        self._event_bytes += size
        if self._event_bytes > 4 * self._stream_window:
            return False
        self._events.append(event)
        return True

    def release(self) -> tuple[list[dict[str, Any]], list[Any]]:
        """Everything kept, messages and stream events, handed back once (the link is ready)."""
        messages, self._messages = list(self._messages), deque()
        events, self._events = self._events, []
        return messages, events

    def close(self) -> None:
        """The connection closed: drop the held streams, wake a handshake that waits."""
        self._events.clear()
        self._arrived.set()
