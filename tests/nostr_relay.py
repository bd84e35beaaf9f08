"""A real Nostr relay (nostr-sdk's LocalRelay) on 127.0.0.1 for tests: never a public one.

It runs on its own event loop in a background thread, so synchronous tests and node
subprocesses can all use it; `publish` signs and sends events to it the way a node would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import nostr_sdk as ns

T = TypeVar("T")


class LocalNostrRelay:
    """`start()` it, point nodes at `url`, `stop()` it."""

    def __init__(self) -> None:
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._relay: Any = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> LocalNostrRelay:
        self._thread.start()

        async def open_relay() -> str:
            self._relay = ns.LocalRelayBuilder().addr("127.0.0.1").build()
            await self._relay.run()
            return str(await self._relay.url())

        self.url = self._run(open_relay())
        return self

    def send(self, event: ns.Event) -> tuple[list[str], dict[str, str]]:
        """Send a signed event; return (relays that took it, relays that refused it and why)."""

        async def go() -> tuple[list[str], dict[str, str]]:
            client = ns.Client()
            await client.add_relay(ns.RelayUrl.parse(self.url))
            await client.connect(timedelta(seconds=5))
            try:
                out = await client.send_event(event)
                return [str(u) for u in out.success], {str(u): str(e) for u, e in out.failed.items()}
            finally:
                await client.shutdown()

        return self._run(go())

    def listing_event(
        self, content: str, *, expires_in_s: float = 120.0, keys: ns.Keys | None = None
    ) -> ns.Event:
        """A kind-31990 mesh listing event with `content`, signed by `keys` (a fresh key if None)."""
        expires = ns.Timestamp.from_secs(int(time.time() + expires_in_s))
        tags = [ns.Tag.identifier("mesh-llm"), ns.Tag.custom("k", ["mesh-llm"]), ns.Tag.expiration(expires)]
        return ns.EventBuilder(ns.Kind(31990), content).tags(tags).finalize(keys or ns.Keys.generate())

    def stop(self) -> None:
        def close() -> None:
            if self._relay is not None:
                self._relay.shutdown()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)


def dead_relay_url() -> str:
    """A ws:// address on loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


def tamper(event: ns.Event, **changes: Any) -> str:
    """The event's JSON with fields changed after signing: its signature no longer verifies."""
    data = json.loads(event.as_json())
    data.update(changes)
    return json.dumps(data)
