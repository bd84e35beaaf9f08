"""A replayed agent session with the KV prefix cache and without it, side by side.

Six conversations, each with its own system prompt of about 4,000 tokens (agents working in
different projects), take three turns each, interleaved (turn 1 of every conversation, then
turn 2 of every one, ...), on one model server of the demo model with 4 slots: six
conversations on four slots evict each other every round. The same session runs on a server
with `--cache-ram 0` and on one with the cache (RAM and disk); then the cached server is
restarted and each conversation's next turn is timed again: its prefix comes from disk.
Time to first token is taken at the client, streamed; the ratios are cold / cached. Last, one
stream's decode tok/s (128 tokens) on a server with the cache and one without, alternating.

    .venv/bin/python -m benchmarks.bench_prefix_cache [--prefix-tokens 4000] [--turns 3]
        [--decode-rounds 8]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import timed_stream
from tests.harness import smollm2_path

MODEL = "SmolLM2-135M"
CONVERSATIONS = 6


def _start(path: Path, log: Path, cache: list[str], n_ctx: int) -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    cmd = [sys.executable, "-m", "mesh_llm.serving.model_server_main", "--fd", str(sock.fileno()),
           "--model", str(path), "--alias", MODEL, "--n-ctx", str(n_ctx), "--parallel", "4", *cache]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/mesh/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the model server did not start; see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def _system(i: int, words: int) -> str:
    """A project's system prompt and tool list: distinct from its first words on."""
    rules = " ".join(
        f"In project {i}, rule {k} says file {k * (i + 2) % 89}.py stays under {k % 13} kB."
        for k in range(words)
    )
    return f"Project {i} agent. You work in repository proj-{i}. {rules}"


def _turn(client: httpx.Client, url: str, messages: list[dict[str, str]]) -> tuple[float, str, int]:
    """Stream one answer: time to first token, the answer, and the prompt tokens reused."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    ttft = 0.0
    text: list[str] = []
    cached = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk: dict[str, Any] = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if not ttft and (piece or choice.get("finish_reason")):  # not the opening role chunk
                    ttft = time.perf_counter() - started
                text.append(piece)
            usage = chunk.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", cached)
    return ttft, "".join(text), cached


def _session(url: str, systems: list[str], turns: int, start: int = 0) -> dict[int, list[tuple[float, int]]]:
    """Turns ``start`` .. ``start + turns - 1`` of every conversation, interleaved."""
    times: dict[int, list[tuple[float, int]]] = {t: [] for t in range(start, start + turns)}
    history = [[{"role": "system", "content": s}] for s in systems]
    with httpx.Client() as client:
        for t in range(start + turns):
            for i, messages in enumerate(history):
                messages.append(
                    {"role": "user", "content": f"Step {t}: list the rules of project {i} about file {t}."}
                )
                ttft, answer, cached = _turn(client, url, messages)
                messages.append({"role": "assistant", "content": answer})
                if t >= start:
                    times[t].append((ttft, cached))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prefix-tokens", type=int, default=4000, help="about this many tokens per system prompt"
    )
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--decode-rounds", type=int, default=8, help="rounds of one stream's decode")
    args = parser.parse_args()
    path = smollm2_path()
    words = max(1, args.prefix_tokens // 23)  # one rule is about 23 tokens
    systems = [_system(i, words) for i in range(CONVERSATIONS)]
    n_ctx = args.prefix_tokens + 1024
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        log = Path(tmp) / "server.log"
        runs: dict[str, dict[int, list[tuple[float, int]]]] = {}
        cache_flags = ["--cache-ram", str(2 << 30), "--cache-disk", str(4 << 30), "--cache-dir", f"{tmp}/kv"]
        for name, flags in (("cold", []), ("cached", cache_flags)):
            proc, url = _start(path, log, flags, n_ctx)
            try:
                runs[name] = _session(url, systems, args.turns)
            finally:
                _stop(proc)
        # After a restart: each conversation's turns again from the start, first turn timed.
        proc, url = _start(path, log, cache_flags, n_ctx)
        try:
            restarted = _session(url, systems, 1)
        finally:
            _stop(proc)
        decode = _decode(path, log, cache_flags, n_ctx, args.decode_rounds)

    def med(run: dict[int, list[tuple[float, int]]], turns: range) -> float:
        return statistics.median(ttft for t in turns for ttft, _ in run[t])

    later = range(1, args.turns)
    print(
        f"{CONVERSATIONS} conversations x {args.turns} turns, ~{args.prefix_tokens}-token prefixes, 4 slots"
    )
    print(f"{'':34} {'cold s':>8} {'cached s':>9} {'ratio':>6}")
    rows = [
        ("first turns", med(runs["cold"], range(1)), med(runs["cached"], range(1))),
        ("second and later turns", med(runs["cold"], later), med(runs["cached"], later)),
        ("first turn after a restart", med(runs["cold"], range(1)), med(restarted, range(1))),
    ]
    for label, cold, warm in rows:
        print(f"{label:34} {cold:>8.2f} {warm:>9.2f} {cold / warm:>6.1f}x")
    reused = [c for t in later for _, c in runs["cached"][t]]
    print(f"prompt tokens reused on later turns (cached run): median {statistics.median(reused):.0f}")
    print(
        f"one stream's decode: {decode['cold']:.1f} tok/s cold server, {decode['cached']:.1f} with the "
        f"cache, {decode['cached'] / decode['cold']:.3f}x"
    )


def _decode(path: Path, log: Path, cache_flags: list[str], n_ctx: int, rounds: int) -> dict[str, float]:
    """One stream's decode tok/s on a server without the cache and one with it, alternating."""
    servers = {
        name: _start(path, log, flags, n_ctx) for name, flags in (("cold", []), ("cached", cache_flags))
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        with httpx.Client() as client:
            for r in range(rounds):
                for name, (_, url) in sorted(servers.items(), reverse=r % 2 == 1):
                    timing = timed_stream(url, MODEL, f"Story {r}: a lighthouse keeper", 128, client)
                    rates[name].append(timing.decode_tok_s)
    finally:
        for proc, _ in servers.values():
            _stop(proc)
    return {name: statistics.median(values) for name, values in rates.items()}


if __name__ == "__main__":
    main()
