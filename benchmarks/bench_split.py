"""Split inference below the mesh: solo vs a 2-node split over llama.cpp's RPC on plain local TCP.

One run on loopback, SmolLM2-135M Q4_1: the host model server keeps layers [0, 15) and one RPC
worker process holds [15, 30). Measures decode and prompt-processing tokens/s (alternating
solo and split each round), model-load time (start -> healthy), and the bytes that cross the
host -> worker connection while loading, with and without a prefilled RPC cache. The split's
bytes are counted by a small relay; its speeds are measured without one (the floor any
tunnel is compared to), and once more through the relay for reference.

    .venv/bin/python -m benchmarks.bench_split [--rounds 5] [--tokens 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import median, timed_stream
from mesh_llm.config import BackendConfig
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.serving.model_server import ModelServer
from mesh_llm.serving.rpc.cache import clear_rpc_cache, prefill_rpc_cache
from mesh_llm.serving.rpc.supervisor import RpcWorker
from tests.gguf_fixtures import write_wide_llama_gguf
from tests.harness import NodeProcess, smollm2_path
from tests.integration.test_rpc_split import CountingRelay, layer_bytes

STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."
LONG = " ".join(["The quick brown fox jumps over the lazy dog while the old keeper watches the sea."] * 24)


@contextlib.asynccontextmanager
async def serving(
    log_dir: Path, model: Path, threads: int, endpoints: Sequence[str] = (), split: Sequence[int] = (),
    output_on_host: bool = True, n_ctx: int = 2048,
) -> AsyncIterator[tuple[ModelServer, float]]:  # fmt: skip
    size = await asyncio.to_thread(os.path.getsize, model)
    server = ModelServer(
        ResolvedModel("m", model, size), BackendConfig(n_ctx=n_ctx, n_threads=threads), log_dir,
        rpc_endpoints=endpoints, layer_split=split, output_on_host=output_on_host,
    )  # fmt: skip
    t0 = time.perf_counter()
    await server.start()
    try:
        assert await server.wait_ready(120), server.status()
        yield server, time.perf_counter() - t0
    finally:
        await server.stop()


def prompt_tok_s(url: str, client: httpx.Client, round_no: int) -> float:
    """Prompt tokens per second of a long prompt that no earlier request shares a prefix with."""
    body = {"model": "SmolLM2-135M", "prompt": f"{round_no}: {LONG}", "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/completions", json=body, timeout=300)
    r.raise_for_status()
    return float(r.json()["usage"]["prompt_tokens"]) / (time.perf_counter() - t0)


async def speeds(urls: dict[str, str], rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    def run() -> dict[str, dict[str, float]]:
        runs: dict[str, dict[str, list[float]]] = {n: {"decode": [], "prompt": []} for n in urls}
        with httpx.Client() as client:
            for url in urls.values():
                timed_stream(url, "SmolLM2-135M", STORY, 8, client)  # warm up
            for i in range(rounds):
                names = list(urls) if i % 2 == 0 else list(reversed(urls))
                for name in names:
                    runs[name]["decode"].append(
                        timed_stream(urls[name], "SmolLM2-135M", STORY, tokens, client).decode_tok_s
                    )
                    runs[name]["prompt"].append(prompt_tok_s(urls[name], client, i))
        return {n: {k: median(v) for k, v in r.items()} for n, r in runs.items()}

    return await asyncio.to_thread(run)


def _decode_counted(url: str, relay: CountingRelay, tokens: int) -> int:
    with httpx.Client() as client:
        timed_stream(url, "SmolLM2-135M", STORY, 8, client)
        relay.reset()
        return timed_stream(url, "SmolLM2-135M", STORY, tokens, client).tokens


async def traffic_per_token(
    tmp: Path, model: Path, worker: RpcWorker, threads: int
) -> dict[str, dict[str, float]]:
    """Bytes each way and round trips per decoded token, head on the host vs on the worker."""
    out = {}
    for label, on_host in (("head on host", True), ("head on worker", False)):
        relay = CountingRelay(worker.endpoint)
        try:
            async with serving(tmp / f"traffic-{on_host}", model, threads, [relay.endpoint], [15, 15],
                               on_host) as (server, _):  # fmt: skip
                n = await asyncio.to_thread(_decode_counted, server.base_url, relay, 64)
                out[label] = {
                    "to": relay.to_worker / n,
                    "from": relay.from_worker / n,
                    "rt": relay.round_trips / n,
                }
        finally:
            relay.close()
    return out


async def bytes_moved(
    tmp: Path, model: Path, split: list[int], threads: int, output_on_host: bool
) -> dict[str, Any]:
    """Host -> worker bytes while loading, without and with a prefilled cache; load times."""
    worker_range = (split[0], sum(split))
    out: dict[str, Any] = {}
    for label in ("cold", "prefilled"):
        cache = tmp / f"cache-{model.stem}-{label}"
        prefill_s = 0.0
        if label == "prefilled":
            t0 = time.perf_counter()
            prefill_rpc_cache(model, worker_range, cache, include_output=not output_on_host)
            prefill_s = time.perf_counter() - t0
        worker = RpcWorker(0, cache if label == "prefilled" else None, tmp, name=f"w-{model.stem}-{label}",
                           n_threads=threads)  # fmt: skip
        await worker.start()
        relay = CountingRelay(worker.endpoint)
        try:
            async with serving(tmp / f"{model.stem}-{label}", model, threads, [relay.endpoint], split,
                               output_on_host) as (_, load_s):  # fmt: skip
                out[label] = {"bytes": relay.to_worker, "load_s": load_s, "prefill_s": prefill_s}
        finally:
            relay.close()
            await worker.stop()
            clear_rpc_cache(cache)
    return out


async def main_async(args: argparse.Namespace) -> None:
    model = smollm2_path()
    split = [15, 15]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worker = RpcWorker(0, None, tmp, name="w", n_threads=args.threads)
        await worker.start()
        relay = CountingRelay(worker.endpoint)
        try:
            threads = ["--threads", str(args.threads)]
            host = NodeProcess(["--split", "--model", "SmolLM2-135M", *threads], tmp / "node-a").start()
            mesh_nodes = [host]
            try:
                token = (await asyncio.to_thread(host.wait_serving))["invite_token"]
                mesh_nodes.append(NodeProcess(["--join", token, *threads], tmp / "node-b").start())
                ready = await asyncio.to_thread(host.wait_for, _mesh_split_ready, 60, "the mesh split")
                mesh_load = next(m for m in ready["models"] if m["local"])["load_s"]
                async with (
                    serving(tmp / "solo", model, args.threads) as (solo, solo_load),
                    serving(tmp / "split", model, args.threads, [worker.endpoint], split) as (
                        tcp,
                        split_load,
                    ),
                ):
                    urls = {"solo": solo.base_url, "split-tcp": tcp.base_url, "split-mesh": host.api}
                    s = await speeds(urls, args.rounds, args.tokens)
                mesh_row = next(m for m in host.status()["models"] if m["local"])
            finally:
                for n in mesh_nodes:
                    n.stop()
            async with serving(tmp / "relay", model, args.threads, [relay.endpoint], split) as (via, _):
                s.update(await speeds({"split-relay": via.base_url}, max(2, args.rounds // 2), args.tokens))
            relay.close()
            traffic = await traffic_per_token(tmp, model, worker, args.threads)
        finally:
            relay.close()
            await worker.stop()
        per_layer, other = layer_bytes(model)
        smol_share = sum(per_layer[split[0] :]) + other["token_embd.weight"]
        smol = await bytes_moved(tmp, model, split, args.threads, output_on_host=False)
        wide_model = write_wide_llama_gguf(tmp / "wide.gguf")
        wide_layers, _ = layer_bytes(wide_model)
        wide = await bytes_moved(tmp, wide_model, [1, 1], args.threads, output_on_host=True)

    print(f"SmolLM2-135M Q4_1, split {split} (host, worker), threads={args.threads}, "
          f"rounds={args.rounds}, {args.tokens} decode tokens, medians")  # fmt: skip
    print(f"{'path':<14}{'decode tok/s':>14}{'prompt tok/s':>14}")
    for name, v in s.items():
        print(f"{name:<14}{v['decode']:>14.1f}{v['prompt']:>14.1f}")
    print(f"split-tcp / solo: decode {s['split-tcp']['decode'] / s['solo']['decode']:.1%}, "
          f"prompt {s['split-tcp']['prompt'] / s['solo']['prompt']:.1%}")  # fmt: skip
    print(f"split-mesh / split-tcp: decode {s['split-mesh']['decode'] / s['split-tcp']['decode']:.1%}, "
          f"prompt {s['split-mesh']['prompt'] / s['split-tcp']['prompt']:.1%}")  # fmt: skip
    print(f"mesh split: load (plan -> serving, both nodes) {mesh_load:.2f} s; bytes host -> worker "
          f"{mesh_row['shards'][1]['bytes_sent'] / 1e6:.2f} MB (worker share est. {mesh_row['shards'][1]['bytes'] / 1e6:.1f} MB)")  # fmt: skip
    for label, t in traffic.items():
        print(f"per decoded token, {label}: {t['to']:.0f} B to worker, {t['from']:.0f} B back, "
              f"{t['rt']:.1f} round trips")  # fmt: skip
    print(f"load (start -> healthy): solo {solo_load:.2f} s, split {split_load:.2f} s")
    for name, share, res in (
        ("SmolLM2, head on worker", smol_share, smol),
        ("wide F32 2x77 MB", wide_layers[1], wide),
    ):
        cold, warm = res["cold"], res["prefilled"]
        print(f"{name}: worker share {share / 1e6:.1f} MB; cold {cold['bytes'] / 1e6:.2f} MB "
              f"(load {cold['load_s']:.2f} s); prefilled {warm['bytes'] / 1e6:.2f} MB = "
              f"{warm['bytes'] / share:.2%} of share (load {warm['load_s']:.2f} s, prefill {warm['prefill_s']:.2f} s)")  # fmt: skip


def _mesh_split_ready(status: dict[str, Any]) -> bool:
    rows = [m for m in status["models"] if m["local"]]
    return bool(rows) and rows[0].get("mode") == "split" and rows[0]["ready"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the host and of the worker each")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
