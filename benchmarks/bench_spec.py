"""Speculative decoding: decode tokens/s with and without drafts, side by side in one run.

SmolLM2-135M Q4_1, one llama.cpp thread per process. Every configuration runs at once and the
rounds alternate between them:

    solo                the model alone;  solo+lookup  the same with prompt lookup
    split               a 2-node split [15, 15] whose worker sits behind a UDP relay holding each
                        datagram 5 ms each way (10 ms added to every round trip, as over a LAN
                        or WAN; benchmarks/udp_delay.py)
    split+self          the same split drafted by the same model loaded solo on the host: a
                        perfect draft, the upper bound of what hiding round trips gives
    split+lookup        the same split with prompt lookup

Two prompts: a story (free text) and an edit task whose answer is the prompt's code with one
name changed, where prompt lookup pays. Reports the median decode tok/s per configuration and
prompt, the ratio to its no-draft baseline, and each drafter's acceptance.

    .venv/bin/python -m benchmarks.bench_spec [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import median, timed_stream
from mesh_llm.peer.token import InviteToken
from tests.harness import NodeProcess, smollm2_path

STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."
CODE = '''import json
from pathlib import Path


def load_config(path):
    """Read the configuration file and return it as a dictionary."""
    with open(path) as f:
        data = json.load(f)
    if "name" not in data:
        raise ValueError("the configuration has no name")
    return data


def save_config(path, data):
    """Write the configuration back, sorted and indented."""
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def config_names(paths):
    return [load_config(p)["name"] for p in paths]
'''
EDIT = (
    f"Here is a Python module:\n\n{CODE}\n"
    "The same module with load_config renamed to read_config:\n\nimport json\nfrom pathlib import Path\n"
)
FLAGS = ["--threads", "1", "--parallel", "1"]


@contextlib.contextmanager
def delayed_split(root: Path, name: str, draft: list[str], delay_ms: float) -> Iterator[NodeProcess]:
    """A split host and its worker, the worker's QUIC link through a delaying relay."""
    host = NodeProcess(["--split", "--model", "SmolLM2-135M", *FLAGS, *draft], root / f"{name}-a").start()
    relay: subprocess.Popen[str] | None = None
    worker: NodeProcess | None = None
    try:
        status = host.wait_serving()
        relay = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.udp_delay", "--to", f"127.0.0.1:{status['mesh_port']}",
             "--delay-ms", str(delay_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert relay.stdout is not None
        relay_port = json.loads(relay.stdout.readline())["port"]
        token = InviteToken.decode(status["invite_token"])
        via_relay = InviteToken(token.mesh_id, token.secret, token.node_id, (f"127.0.0.1:{relay_port}",))
        worker = NodeProcess(["--join", via_relay.encode(), *FLAGS], root / f"{name}-b").start()
        host.wait_for(_split_ready, 120, f"the {name} split")
        yield host
    finally:
        for node in (worker, host):
            if node is not None:
                node.stop()
        if relay is not None:
            relay.kill()
            relay.wait()


def _split_ready(s: dict[str, Any]) -> bool:
    rows = [m for m in s["models"] if m["local"]]
    return bool(rows) and rows[0].get("mode") == "split" and rows[0]["ready"] and len(rows[0]["shards"]) == 2


def _solo(root: Path, name: str, draft: list[str]) -> NodeProcess:
    node = NodeProcess(["--model", "SmolLM2-135M", *FLAGS, *draft], root / name).start()
    node.wait_serving()
    return node


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument(
        "--delay-ms", type=float, default=5.0, help="held in each direction between the split's nodes"
    )
    args = ap.parse_args()
    self_draft = ["--draft", str(smollm2_path())]
    runs: dict[tuple[str, str], list[float]] = {}
    spec: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        nodes: dict[str, NodeProcess] = {}
        for name, draft in (("solo", ["--no-draft"]), ("solo+lookup", ["--draft", "lookup"])):
            nodes[name] = _solo(root, name, draft)
            stack.callback(nodes[name].stop)
        for name, draft in (
            ("split", ["--no-draft"]),
            ("split+self", self_draft),
            ("split+lookup", ["--draft", "lookup"]),
        ):
            nodes[name] = stack.enter_context(delayed_split(root, name, draft, args.delay_ms))
        plan = [(n, "story") for n in ("solo", "split", "split+self")] + [
            (n, "edit") for n in ("solo", "solo+lookup", "split", "split+lookup")
        ]
        prompts = {"story": STORY, "edit": EDIT}
        with httpx.Client() as client:
            for node in nodes.values():
                timed_stream(node.api, "SmolLM2-135M", STORY, 8, client)  # warm up
            for i in range(args.rounds):
                for name, prompt in plan if i % 2 == 0 else list(reversed(plan)):
                    t = timed_stream(nodes[name].api, "SmolLM2-135M", prompts[prompt], args.tokens, client)
                    runs.setdefault((name, prompt), []).append(t.decode_tok_s)
        for name, node in nodes.items():
            (row,) = [m for m in node.status()["models"] if m["local"]]
            spec[name] = row.get("speculative")
    print(f"SmolLM2-135M Q4_1, 1 thread per process, {args.rounds} rounds x {args.tokens} tokens, "
          f"split worker behind +{2 * args.delay_ms:g} ms per round trip; medians")  # fmt: skip
    print(f"{'configuration':<15}{'prompt':<8}{'decode tok/s':>14}{'vs no draft':>13}  drafter")
    for name, prompt in plan:
        tok_s = median(runs[(name, prompt)])
        base = median(runs[(name.split("+")[0], prompt)])
        sp = spec.get(name) or {}
        drafter = (
            f"{sp.get('draft')}: {sp.get('acceptance')} accepted, {sp.get('tokens_per_step')} tokens/step"
            if sp else ""
        )  # fmt: skip
        print(f"{name:<15}{prompt:<8}{tok_s:>14.1f}{tok_s / base:>12.2f}x  {drafter}")


if __name__ == "__main__":
    main()
