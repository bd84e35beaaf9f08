"""A peer's silence to pings, as `Liveness` judges it: only pings sent since its last pong count."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh_llm.transport._liveness import Liveness


def _liveness(sent: list[dict[str, Any]]) -> Liveness:
    return Liveness(sent.append, lambda: None, interval=3600.0)  # pings only when the test says


async def test_a_peer_is_silent_only_while_a_ping_waits_for_its_pong() -> None:
    sent: list[dict[str, Any]] = []
    live = _liveness(sent)
    assert live.silent_for() == 0.0  # nothing asked yet
    live.ping()
    await asyncio.sleep(0.01)
    assert live.silent_for() > 0.0
    loop = asyncio.get_running_loop()
    live.on_pong({"n": sent[-1]["n"], "h": 0.0}, loop.time())
    assert live.silent_for() == 0.0


async def test_a_lost_ping_does_not_keep_an_answering_peer_silent() -> None:
    sent: list[dict[str, Any]] = []
    live = _liveness(sent)
    live.ping()  # lost on the way: never answered
    await asyncio.sleep(0.01)
    live.ping()
    live.on_pong({"n": sent[-1]["n"]}, asyncio.get_running_loop().time())
    assert live.silent_for() == 0.0


async def test_silence_counts_from_the_oldest_unanswered_ping() -> None:
    sent: list[dict[str, Any]] = []
    live = _liveness(sent)
    live.ping()
    await asyncio.sleep(0.05)
    live.ping()  # a newer ping does not restart the count
    assert live.silent_for() >= 0.05
