"""How long the mesh takes to move a standby onto a hot model, and how many requests succeed meanwhile.

Real nodes on loopback: A serves SmolLM2-135M, B serves Gemma-3-270M, D is a standby with both
on disk. A load loop (bounded in count and time) sends skewed demand through A's API: 9 of every
10 requests ask for SmolLM2, 1 for Gemma. The run reports when D starts serving SmolLM2
(decision, then ready) and the success rate of all requests sent.

    .venv/bin/python -m benchmarks.bench_rebalance [--rate 4] [--max-seconds 90]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from tests.harness import NodeProcess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--max-seconds", type=float, default=90.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = NodeProcess(["--model", "SmolLM2-135M"], Path(tmp) / "a").start()
        nodes = [a]
        try:
            token = a.wait_serving()["invite_token"]
            b = NodeProcess(["--model", "Gemma-3-270M", "--join", token], Path(tmp) / "b").start()
            d = NodeProcess(["--join", token], Path(tmp) / "d").start()
            nodes += [b, d]
            b.wait_serving()
            a.wait_for(
                lambda s: len(s["peers"]) == 2 and sum(m["ready"] for m in s["models"]) == 2, 60, "mesh"
            )
            d_id = d.status()["node_id"]
            sent = ok = 0
            picked = ready = None
            t0 = time.monotonic()
            with httpx.Client(timeout=60) as http:
                while time.monotonic() - t0 < args.max_seconds:
                    model = "Gemma-3-270M" if sent % 10 == 9 else "SmolLM2-135M"
                    r = http.post(
                        f"{a.api}/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1}
                    )
                    sent += 1
                    ok += r.status_code == 200
                    rows = [
                        m for m in a.status()["models"] if m["host"] == d_id and m["name"] == "SmolLM2-135M"
                    ]
                    if rows and picked is None:
                        picked = time.monotonic() - t0
                    if rows and rows[0]["ready"]:
                        ready = time.monotonic() - t0
                        break
                    time.sleep(max(0.0, 1 / args.rate - 0.02))
                for _ in range(20):  # after the shift: requests now spread over A and D
                    r = http.post(
                        f"{a.api}/v1/completions",
                        json={"model": "SmolLM2-135M", "prompt": "Hi", "max_tokens": 1},
                    )
                    sent += 1
                    ok += r.status_code == 200
            demand = {row["model"]: row for row in a.status()["demand"]}
        finally:
            for node in nodes:
                node.stop()
    print(f"load: {args.rate:g} req/s, 90% SmolLM2-135M / 10% Gemma-3-270M, through A's :9337")
    print(
        f"standby D decided for SmolLM2 after {picked:.1f} s, serving it after {ready:.1f} s"
        if ready
        else "no shift"
    )
    print(f"requests: {ok}/{sent} succeeded ({ok / sent * 100:.1f}%)")
    print(
        f"demand seen by A: SmolLM2 {demand['SmolLM2-135M']['rpm']:.1f} req/min over "
        f"{len(demand['SmolLM2-135M']['servers'])} servers, Gemma {demand['Gemma-3-270M']['rpm']:.1f} req/min"
    )


if __name__ == "__main__":
    main()
