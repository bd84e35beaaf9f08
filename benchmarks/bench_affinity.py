"""Prefix affinity: where the later turns of agent conversations land, two hosts behind a client.

Hosts A and B serve SmolLM2-135M; a `--client` node C joins them and takes every request. Six
conversations, each with its own system prompt (agents in different projects), send their turns
interleaved in a shuffled order (a fixed seed), each turn resending the whole conversation so far
through one of the three APIs in turn. A later turn lands warm when it reaches the host that
served its conversation's previous turn, which holds that prompt. Which host got a request is
read from C's own per-host request counters (requests go one at a time).

    .venv/bin/python -m benchmarks.bench_affinity [--conversations 6] [--turns 3] [--seed 1] [--baseline]

`--baseline` stamps each turn's number into its system prompt, so no two turns share a digest:
the routing without affinity (least loaded, equal loads in rotation), for comparison.

The issue's target: at least 90 % of later turns land warm.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"


def _routed(c: NodeProcess) -> dict[str, int]:
    return {m["host"]: m["requests"] for m in c.status()["models"] if m["name"] == MODEL}


def _request(api: str, system: str, users: list[str]) -> tuple[str, dict[str, Any]]:
    """(path, body) for one turn: the whole conversation so far, in `api`'s shape."""
    history: list[dict[str, Any]] = []
    for i, text in enumerate(users):
        if i:
            history.append({"role": "assistant", "content": f"Done step {i}."})
        history.append({"role": "user", "content": text})
    if api == "messages":
        return "/v1/messages", {"model": MODEL, "system": system, "messages": history, "max_tokens": 4}
    if api == "responses":
        body = {
            "model": MODEL,
            "instructions": system,
            "input": history,
            "max_output_tokens": 16,
            "store": False,
        }
        return "/v1/responses", body
    messages = [{"role": "system", "content": system}, *history]
    return "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}


def run(conversations: int, turns: int, seed: int, baseline: bool = False) -> dict[str, Any]:
    apis = ("chat", "messages", "responses")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = NodeProcess(["--model", MODEL], root / "a").start()
        nodes = [a]
        try:
            token = a.wait_serving()["invite_token"]
            b = NodeProcess(["--model", MODEL, "--join", token], root / "b").start()
            c = NodeProcess(["--client", "--join", token], root / "c").start()
            nodes += [b, c]
            b.wait_serving()
            c.wait_for(lambda s: len([m for m in s["models"] if m["ready"]]) == 2, 60, "both hosts on C")
            rng = random.Random(seed)
            last: dict[int, str] = {}
            warm = later = 0
            first_hosts: dict[str, int] = {}
            for turn in range(turns):
                order = list(range(conversations))
                rng.shuffle(order)
                for conv in order:
                    system = f"You are a coding agent in ~/project-{conv}. " + "Follow the house rules. " * 40
                    if baseline:
                        system += f" (turn {turn})"
                    users = [f"Step {i} of the task in project {conv}." for i in range(turn + 1)]
                    path, body = _request(apis[conv % len(apis)], system, users)
                    before = _routed(c)
                    httpx.post(f"{c.api}{path}", json=body, timeout=120).raise_for_status()
                    after = _routed(c)
                    (host,) = [h for h, n in after.items() if n > before.get(h, 0)]
                    if turn == 0:
                        first_hosts[host[:8]] = first_hosts.get(host[:8], 0) + 1
                    else:
                        later += 1
                        warm += host == last[conv]
                    last[conv] = host
        finally:
            stop_all(nodes)
    return {"later_turns": later, "warm": warm, "first_turns_per_host": first_hosts}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="no two turns share a digest")
    args = parser.parse_args()
    result = run(args.conversations, args.turns, args.seed, args.baseline)
    share = result["warm"] / max(1, result["later_turns"])
    print(
        f"two hosts behind a --client node, {args.conversations} conversations x {args.turns} turns "
        f"(chat, messages, responses in turn), interleaved{', baseline' if args.baseline else ''}:"
    )
    print(f"  later turns landing warm: {result['warm']}/{result['later_turns']} = {share:.0%}")
    print(f"  first turns per host: {result['first_turns_per_host']}")


if __name__ == "__main__":
    main()
