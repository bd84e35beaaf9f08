"""Tokens/s and time-to-first-token through the :9337 proxy vs the model server hit directly.

Runs one real node serving SmolLM2-135M on loopback and alternates direct and proxied
requests (same prompt, same token count) so both see the same machine state.

    .venv/bin/python -m benchmarks.bench_proxy [--rounds 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import tempfile
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
        node = NodeProcess(["--model", "SmolLM2-135M"], Path(tmp)).start()
        try:
            status = node.wait_serving()
            # The model server listens only on its Unix socket (docs/security.md).
            direct = httpx.HTTPTransport(uds=status["models"][0]["socket"])
            runs: dict[str, list] = {"direct": [], "proxy": []}  # type: ignore[type-arg]
            with httpx.Client(transport=direct) as to_model, httpx.Client() as to_api:
                paths = {"direct": ("http://localhost", to_model), "proxy": (node.api, to_api)}
                for url, client in paths.values():  # warm both paths
                    timed_stream(url, "SmolLM2-135M", PROMPT, 8, client)
                for i in range(args.rounds):
                    order = ["direct", "proxy"]
                    for name in order if i % 2 == 0 else reversed(order):
                        url, client = paths[name]
                        runs[name].append(timed_stream(url, "SmolLM2-135M", PROMPT, args.tokens, client))
        finally:
            node.stop()
    d_tps = median([r.decode_tok_s for r in runs["direct"]])
    p_tps = median([r.decode_tok_s for r in runs["proxy"]])
    d_ttft = median([r.ttft_s for r in runs["direct"]]) * 1000
    p_ttft = median([r.ttft_s for r in runs["proxy"]]) * 1000
    print(f"rounds={args.rounds} tokens={args.tokens} model=SmolLM2-135M (medians)")
    print(f"{'path':<8}{'decode tok/s':>14}{'TTFT ms':>10}")
    print(f"{'direct':<8}{d_tps:>14.1f}{d_ttft:>10.1f}")
    print(f"{'proxy':<8}{p_tps:>14.1f}{p_ttft:>10.1f}")
    print(f"proxy/direct tokens/s: {p_tps / d_tps * 100:.1f}%   added TTFT: {p_ttft - d_ttft:+.2f} ms")


if __name__ == "__main__":
    main()
