"""Prefix affinity through a `--client` node: two hosts of SmolLM2-135M, and every turn of one
conversation lands on one host, in each of the three APIs, while new conversations spread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Hosts A and B of one model and a client C joined to them; yields C."""
    root: Path = tmp_path_factory.mktemp("affinity")
    a = NodeProcess(["--model", MODEL], root / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--model", MODEL, "--join", token], root / "b").start()
        c = NodeProcess(["--client", "--join", token], root / "c").start()
        nodes += [b, c]
        b.wait_serving()
        c.wait_for(lambda s: len([m for m in s["models"] if m["ready"]]) == 2, 30, "both hosts on C")
        yield c
    finally:
        stop_all(nodes)


def routed(c: NodeProcess) -> dict[str, int]:
    """Host -> requests C has sent it (C's own status counters)."""
    return {m["host"]: m["requests"] for m in c.status()["models"] if m["name"] == MODEL}


def landing(c: NodeProcess, send: Callable[[], None]) -> str:
    """The host one request went to."""
    before = routed(c)
    send()
    after = routed(c)
    grew = [h for h, n in after.items() if n > before.get(h, 0)]
    assert len(grew) == 1, (before, after)
    return grew[0]


def chat_turn(c: NodeProcess, system: str, users: list[str]) -> Callable[[], None]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i, text in enumerate(users):
        if i:
            messages.append({"role": "assistant", "content": f"Answer {i}."})
        messages.append({"role": "user", "content": text})
    body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}
    return lambda: httpx.post(f"{c.api}/v1/chat/completions", json=body, timeout=60).raise_for_status()


def messages_turn(c: NodeProcess, system: str, users: list[str]) -> Callable[[], None]:
    messages: list[dict[str, Any]] = []
    for i, text in enumerate(users):
        if i:
            messages.append({"role": "assistant", "content": f"Answer {i}."})
        messages.append({"role": "user", "content": text})
    body = {"model": MODEL, "system": system, "messages": messages, "max_tokens": 4}
    return lambda: httpx.post(f"{c.api}/v1/messages", json=body, timeout=60).raise_for_status()


def responses_turn(c: NodeProcess, system: str, users: list[str]) -> Callable[[], None]:
    items: list[dict[str, Any]] = []
    for i, text in enumerate(users):
        if i:
            items.append({"role": "assistant", "content": f"Answer {i}."})
        items.append({"role": "user", "content": text})
    body = {"model": MODEL, "instructions": system, "input": items, "max_output_tokens": 16, "store": False}
    return lambda: httpx.post(f"{c.api}/v1/responses", json=body, timeout=60).raise_for_status()


@pytest.mark.parametrize(
    "turn", [chat_turn, messages_turn, responses_turn], ids=["chat", "messages", "responses"]
)
def test_consecutive_turns_of_one_conversation_land_on_one_host(
    two_hosts: NodeProcess, turn: Callable[[NodeProcess, str, list[str]], Callable[[], None]]
) -> None:
    c = two_hosts
    system = f"You help with project {turn.__name__}."
    users = ["List the files.", "Open the first.", "Explain it.", "Summarise."]
    hosts = [landing(c, turn(c, system, users[: i + 1])) for i in range(len(users))]
    assert len(set(hosts)) == 1, hosts


def test_different_conversations_spread_over_the_hosts(two_hosts: NodeProcess) -> None:
    c = two_hosts
    firsts = {landing(c, chat_turn(c, f"You help with project {i}.", ["Hello."])) for i in range(4)}
    assert len(firsts) == 2, firsts
