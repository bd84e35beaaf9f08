"""A 2-node split across two network namespaces: through the mesh vs llama.cpp RPC over plain TCP.

The host side (node A, the client, the model server of the plain-TCP split) runs in one
namespace, the worker side (node B, or the bare RPC server) in the other, joined by a veth pair
with a 1500-byte MTU (benchmarks/netns.py): a real non-loopback path. SmolLM2-135M Q4_1, split
[15, 15], one thread each. Paths, in turns each round:

    (c) tcp          host model server -> TCP over the veth -> ggml RPC server
    (b) mesh-<quic>  node A -> RPC over an authenticated QUIC stream over the veth -> node B

for each QUIC engine. Measures decode tokens/s (128 tokens) and the prefill of a ~2,000-token
prompt no earlier request shares a prefix with.

    sudo .venv/bin/python -m benchmarks.bench_split_netns [--rounds 3] [--quic qh3,aioquic]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_split import serving
from benchmarks.common import median, timed_stream
from benchmarks.netns import Pair, rerun_in_host_namespace
from tests.harness import NodeProcess, smollm2_path

STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SENTENCE = "The quick brown fox jumps over the lazy dog while the old keeper watches the sea."
RPC_PORT = 50123


def prefill_tok_s(url: str, client: httpx.Client, tag: str) -> tuple[float, int]:
    """Prompt tokens/s of a ~2,000-token prompt with a fresh prefix, and its token count."""
    prompt = f"{tag}: " + " ".join([SENTENCE] * 110)
    body = {"model": "SmolLM2-135M", "prompt": prompt, "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    tokens = int(r.json()["usage"]["prompt_tokens"])
    return tokens / (time.perf_counter() - t0), tokens


async def _wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
            writer.close()
            return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _split_ready(status: dict[str, Any]) -> bool:
    rows = [m for m in status["models"] if m["local"]]
    return bool(rows) and rows[0].get("mode") == "split" and rows[0]["ready"]


def measure(
    urls: dict[str, str], rounds: int, tokens: int, results: dict[str, dict[str, list[float]]]
) -> int:
    prompt_tokens = 0
    with httpx.Client() as client:
        for url in urls.values():
            timed_stream(url, "SmolLM2-135M", STORY, 8, client)  # warm up
        for i in range(rounds):
            names = list(urls) if i % 2 == 0 else list(reversed(urls))
            for name in names:
                row = results.setdefault(name, {"decode": [], "prefill": []})
                row["decode"].append(
                    timed_stream(urls[name], "SmolLM2-135M", STORY, tokens, client).decode_tok_s
                )
                speed, prompt_tokens = prefill_tok_s(urls[name], client, f"{name} {i} {time.time()}")
                row["prefill"].append(speed)
    return prompt_tokens


async def inside(args: argparse.Namespace) -> None:
    pair = Pair()
    far = pair.prefix(pair.worker_ns)
    model = smollm2_path()
    engines = [e for e in args.quic.split(",") if e]
    results: dict[str, dict[str, list[float]]] = {}
    prompt_tokens = 0
    rpc_server = await asyncio.create_subprocess_exec(
        *far, sys.executable, "-c",
        "from mesh_llm.serving.rpc.ggml import serve_rpc_forever; "
        f"serve_rpc_forever('{pair.worker_ip}:{RPC_PORT}', None, 1, 'cpu')",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_for_port(pair.worker_ip, RPC_PORT)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            endpoint = f"{pair.worker_ip}:{RPC_PORT}"
            async with serving(tmp / "tcp", model, 1, [endpoint], [15, 15], n_ctx=4096) as (tcp, _):
                for engine in engines:
                    flags = ["--threads", "1", "--quic", engine]
                    host = NodeProcess(
                        ["--split", "--model", "SmolLM2-135M", *flags], tmp / f"a-{engine}"
                    ).start()
                    nodes = [host]
                    try:
                        token = (await asyncio.to_thread(host.wait_serving))["invite_token"]
                        nodes.append(
                            NodeProcess(["--join", token, *flags], tmp / f"b-{engine}", prefix=far).start()
                        )
                        await asyncio.to_thread(host.wait_for, _split_ready, 120, "the mesh split")
                        urls = {"tcp": tcp.base_url, f"mesh-{engine}": host.api}
                        prompt_tokens = await asyncio.to_thread(
                            measure, urls, args.rounds, args.tokens, results
                        )
                        status = host.status()
                        peers = {p["node_id"][:8]: p.get("rtt_min_ms") for p in status.get("peers", [])}
                        print(f"{engine}: split ready; peers (min RTT ms) {peers}", flush=True)
                    finally:
                        for node in nodes:
                            node.stop()
    finally:
        rpc_server.kill()
        await rpc_server.wait()
    print(f"SmolLM2-135M Q4_1 split [15, 15] across two network namespaces (veth, MTU 1500), "
          f"1 thread each; {args.rounds} rounds per engine; {args.tokens} decode tokens; "
          f"prefill of {prompt_tokens} prompt tokens; medians")  # fmt: skip
    print(f"{'path':<14}{'decode tok/s':>14}{'prefill tok/s':>15}")
    med = {name: {k: median(v) for k, v in row.items()} for name, row in results.items()}
    for name, row in med.items():
        print(f"{name:<14}{row['decode']:>14.1f}{row['prefill']:>15.1f}")
    for engine in engines:
        b, c = med[f"mesh-{engine}"], med["tcp"]
        print(f"(b) mesh-{engine} / (c) tcp: decode {b['decode'] / c['decode']:.1%}, "
              f"prefill {b['prefill'] / c['prefill']:.1%}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--quic", default="qh3,aioquic", help="QUIC engines to measure, comma-separated")
    ap.add_argument("--inside", action="store_true", help="(internal) already in the host namespace")
    args = ap.parse_args()
    if args.inside:
        asyncio.run(inside(args))
        return
    rerun_in_host_namespace("benchmarks.bench_split_netns", [*sys.argv[1:], "--inside"])


if __name__ == "__main__":
    main()
