"""Tokens/s and time-to-first-token at the serving node vs through a client node over the mesh,
plus the time from `kill -9` of the host to its removal from every other node's view.

Three real nodes on loopback: A serves SmolLM2-135M, B joins as a standby, C joins as a client.
Requests alternate between A's :9337 (baseline) and C's :9337 (QUIC tunnel to A).

    .venv/bin/python -m benchmarks.bench_mesh [--rounds 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import median, timed_stream
from tests.harness import NodeProcess

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = NodeProcess(["--model", "SmolLM2-135M"], Path(tmp) / "a").start()
        nodes = [a]
        try:
            token = a.wait_serving()["invite_token"]
            b = NodeProcess(["--join", token], Path(tmp) / "b").start()
            c = NodeProcess(["--client", "--join", token], Path(tmp) / "c").start()
            nodes += [b, c]
            c.wait_for(lambda s: any(m["ready"] for m in s["models"]), 30, "the model on C")
            b.wait_for(lambda s: len(s["peers"]) == 2, 30, "B to see A and C")
            runs: dict[str, list] = {"host": [], "client": []}  # type: ignore[type-arg]
            with httpx.Client() as client:
                for url in (a.api, c.api):
                    timed_stream(url, "SmolLM2-135M", PROMPT, 8, client)
                for i in range(args.rounds):
                    order = [("host", a.api), ("client", c.api)]
                    for name, url in order if i % 2 == 0 else reversed(order):
                        runs[name].append(timed_stream(url, "SmolLM2-135M", PROMPT, args.tokens, client))
            a_id = a.status()["node_id"]
            assert a.proc is not None
            os.kill(a.proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            removal = {}
            while len(removal) < 2 and time.monotonic() - t0 < 30:
                for name, node in (("B", b), ("C", c)):
                    if name not in removal and a_id not in {p["node_id"] for p in node.status()["peers"]}:
                        removal[name] = time.monotonic() - t0
                time.sleep(0.05)
        finally:
            for node in nodes:
                node.stop()
    h_tps = median([r.decode_tok_s for r in runs["host"]])
    c_tps = median([r.decode_tok_s for r in runs["client"]])
    h_ttft = median([r.ttft_s for r in runs["host"]]) * 1000
    c_ttft = median([r.ttft_s for r in runs["client"]]) * 1000
    print(f"rounds={args.rounds} tokens={args.tokens} model=SmolLM2-135M (medians)")
    print(f"{'path':<22}{'decode tok/s':>14}{'TTFT ms':>10}")
    print(f"{'host :9337 (A)':<22}{h_tps:>14.1f}{h_ttft:>10.1f}")
    print(f"{'client :9337 (C->A)':<22}{c_tps:>14.1f}{c_ttft:>10.1f}")
    print(f"client/host tokens/s: {c_tps / h_tps * 100:.1f}%   added TTFT: {c_ttft - h_ttft:+.2f} ms")
    print(
        "kill -9 of A -> removed from view: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(removal.items()))
    )


if __name__ == "__main__":
    main()
