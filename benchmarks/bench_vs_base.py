"""This tree against a base commit, side by side in one run: a solo node, the route through a
client node, and a forced 2-node split.

The base commit is checked out in a temporary git worktree; its nodes run from there (the
working directory decides which `mesh_llm` a node imports), with this tree's venv. For each
scenario both trees' nodes are up at once and the requests alternate between them, so both see
the same machine state. Prints decode tokens/s and time to first token, and new/base ratios.

    .venv/bin/python -m benchmarks.bench_vs_base BASE_REF [--rounds 8] [--tokens 96]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import StreamTiming, median, timed_stream
from tests.harness import REPO, NodeProcess, stop_all

MODEL = "SmolLM2-135M"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@contextlib.contextmanager
def base_tree(ref: str) -> Iterator[Path]:
    """`ref` checked out in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def _node(tree: Path | None, args: list[str], state: Path) -> NodeProcess:
    # `env -C` runs the node from the base tree, so `python -m mesh_llm` imports that tree's code.
    prefix = ["env", "-C", str(tree)] if tree is not None else []
    return NodeProcess(args, state, prefix=prefix).start()


def solo(tree: Path | None, state: Path, nodes: list[NodeProcess]) -> str:
    a = _node(tree, ["--model", MODEL], state / "a")
    nodes.append(a)
    a.wait_serving()
    return a.api


def client_route(tree: Path | None, state: Path, nodes: list[NodeProcess]) -> str:
    a = _node(tree, ["--model", MODEL], state / "a")
    nodes.append(a)
    token = a.wait_serving()["invite_token"]
    c = _node(tree, ["--client", "--join", token], state / "c")
    nodes.append(c)
    c.wait_for(lambda s: any(m["ready"] for m in s["models"]), 60, "the model on the client node")
    return c.api


def split(tree: Path | None, state: Path, nodes: list[NodeProcess]) -> str:
    a = _node(tree, ["--split", "--model", MODEL], state / "a")
    nodes.append(a)
    token = a.wait_serving()["invite_token"]
    nodes.append(_node(tree, ["--join", token], state / "b"))

    def split_ready(s: dict[str, Any]) -> bool:
        rows = [m for m in s["models"] if m["local"]]
        return (
            bool(rows) and rows[0].get("mode") == "split" and rows[0]["ready"] and len(rows[0]["shards"]) == 2
        )

    a.wait_for(split_ready, 120, "a two-node split")
    return a.api


SCENARIOS: dict[str, Callable[[Path | None, Path, list[NodeProcess]], str]] = {
    "solo (proxy)": solo,
    "client route": client_route,
    "2-node split": split,
}


def compare(base: Path, make: Callable[[Path | None, Path, list[NodeProcess]], str], rounds: int,
            tokens: int) -> dict[str, list[StreamTiming]]:  # fmt: skip
    nodes: list[NodeProcess] = []
    runs: dict[str, list[StreamTiming]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = {
                "base": make(base, Path(tmp) / "base", nodes),
                "new": make(None, Path(tmp) / "new", nodes),
            }
            with httpx.Client() as client:
                for url in urls.values():
                    timed_stream(url, MODEL, PROMPT, 8, client)  # warm each path
                for i in range(rounds):
                    for name in ("base", "new") if i % 2 == 0 else ("new", "base"):
                        runs[name].append(timed_stream(urls[name], MODEL, PROMPT, tokens, client))
        finally:
            stop_all(nodes)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="the commit to compare against (a git ref)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    args = ap.parse_args()
    rows = []
    with base_tree(args.base) as base:
        for name, make in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            runs = compare(base, make, args.rounds, args.tokens)
            tps = {k: median([r.decode_tok_s for r in v]) for k, v in runs.items()}
            ttft = {k: median([r.ttft_s for r in v]) * 1000 for k, v in runs.items()}
            rows.append((name, tps, ttft))
    print(f"base={args.base} rounds={args.rounds} tokens={args.tokens} model={MODEL} (medians)")
    print(
        f"{'scenario':<15}{'base tok/s':>11}{'new tok/s':>11}{'new/base':>10}{'base TTFT':>11}{'new TTFT':>10}"
    )
    for name, tps, ttft in rows:
        print(
            f"{name:<15}{tps['base']:>11.1f}{tps['new']:>11.1f}{tps['new'] / tps['base']:>9.3f}x"
            f"{ttft['base']:>9.1f}ms{ttft['new']:>8.1f}ms"
        )


if __name__ == "__main__":
    main()
