"""Requests under faults: two hosts of SmolLM2-135M behind a `--client` node, N requests (half
streamed, half not, K at a time) through the client, in three runs side by side: no fault,
`kill -9` of one host once a quarter of the requests are done, and `SIGSTOP` of one host at the
same point (held until the run ends). A fresh mesh for each run.

Every request is sorted into one of:
- ok: a complete answer (a finish reason, and `[DONE]` for a stream) equal to the no-fault run's
  first answer to the same prompt;
- differs: a complete answer that is not: greedy decoding on CPU depends on how requests were
  batched together (llama.cpp's sums run in another order), so this happens without faults too;
- error: an explicit failure the client can see (an HTTP error status, or a stream's error event);
- wrong: an answer without a finish reason, or a stream that ends without `[DONE]` or an error;
- hung: no answer within the client's timeout.
Latency (request sent -> answer complete) is given for the complete answers: median and p99, and
p99 as a ratio to the no-fault run's, and the three slowest requests with when they were sent.

    .venv/bin/python -m benchmarks.bench_faults [--requests 200] [--concurrency 4] [--tokens 16]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"
PROMPTS = [
    f"Name {n} things found in a {place}."
    for n in (2, 3)
    for place in ("kitchen", "garden", "ship", "library")
]
CLIENT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Outcome:
    prompt: int
    streamed: bool
    kind: str  # "answer", "error", "truncated" or "hung"
    text: str
    seconds: float
    started: float = 0.0  # perf_counter at the request's start


def ask(api: str, i: int, tokens: int) -> Outcome:
    prompt, streamed = i % len(PROMPTS), i % 2 == 0
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[prompt]}],
            "max_tokens": tokens, "temperature": 0, "stream": streamed}  # fmt: skip
    started = time.perf_counter()

    def outcome(kind: str, text: str = "") -> Outcome:
        return Outcome(prompt, streamed, kind, text, time.perf_counter() - started, started)

    try:
        if not streamed:
            r = httpx.post(f"{api}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT)
            if r.status_code != 200:
                return outcome("error", r.text[:200])
            choice = r.json()["choices"][0]
            if choice.get("finish_reason") not in ("stop", "length"):
                return outcome("truncated", choice["message"]["content"] or "")
            return outcome("answer", choice["message"]["content"] or "")
        parts: list[str] = []
        finished = False
        with httpx.stream("POST", f"{api}/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT) as r:
            if r.status_code != 200:
                return outcome("error", r.read().decode()[:200])
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return outcome("answer" if finished else "truncated", "".join(parts))
                chunk = json.loads(data)
                if "error" in chunk:
                    return outcome("error", json.dumps(chunk["error"])[:200])
                for choice in chunk.get("choices", []):
                    parts.append(choice.get("delta", {}).get("content") or "")
                    finished |= choice.get("finish_reason") in ("stop", "length")
        return outcome("truncated", "".join(parts))
    except httpx.TimeoutException:
        return outcome("hung")
    except httpx.HTTPError as exc:
        return outcome("error", f"{type(exc).__name__}: {exc}")


def start_mesh(root: Path) -> dict[str, NodeProcess]:
    a = NodeProcess(["--model", MODEL], root / "a").start()
    nodes = {"a": a}
    try:
        token = a.wait_serving()["invite_token"]
        nodes["b"] = NodeProcess(["--model", MODEL, "--join", token], root / "b").start()
        nodes["c"] = NodeProcess(["--client", "--join", token], root / "c").start()
        nodes["b"].wait_serving()
        nodes["c"].wait_for(
            lambda s: len([m for m in s["models"] if m["ready"]]) == 2, 120, "both hosts on C"
        )
    except BaseException:
        stop_all(nodes.values())
        raise
    return nodes


def run(fault: str, args: argparse.Namespace, root: Path) -> tuple[list[Outcome], float]:
    nodes = start_mesh(root / fault)
    victim = nodes["b"]
    assert victim.proc is not None
    done = 0
    lock = threading.Lock()
    stopped = False
    fault_at = float("nan")

    def one(i: int) -> Outcome:
        nonlocal done, stopped, fault_at
        result = ask(nodes["c"].api, i, args.tokens)
        with lock:
            done += 1
            if fault != "none" and not stopped and done >= args.requests // 4:
                stopped = True
                fault_at = time.perf_counter()
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        return result

    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            return list(pool.map(one, range(args.requests))), fault_at
    finally:
        if fault == "stop" and victim.proc.poll() is None:
            os.kill(victim.proc.pid, signal.SIGCONT)
        stop_all(nodes.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--keep", type=Path, help="keep the nodes' state and logs under this folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = args.keep or Path(tmp)
        results = {fault: run(fault, args, root) for fault in ("none", "kill", "stop")}
    reference: dict[int, str] = {}
    for o in results["none"][0]:
        if o.kind == "answer":
            reference.setdefault(o.prompt, o.text)
    base_p99 = percentile([o.seconds for o in results["none"][0] if o.kind == "answer"], 0.99)
    print(f"{args.requests} requests, {args.concurrency} at a time, {args.tokens} tokens, half streamed")
    print(f"{'fault':>6} {'ok':>4} {'differs':>8} {'error':>6} {'wrong':>6} {'hung':>5} "
          f"{'median s':>9} {'p99 s':>7} {'p99 ratio':>10}")  # fmt: skip
    for fault, (outcomes, fault_at) in results.items():
        counts: Counter[str] = Counter()
        for o in outcomes:
            if o.kind == "answer":
                counts["ok" if reference.get(o.prompt) == o.text else "differs"] += 1
            else:
                counts["wrong" if o.kind == "truncated" else o.kind] += 1
        answered = [o.seconds for o in outcomes if o.kind == "answer"]
        p99 = percentile(answered, 0.99)
        print(f"{fault:>6} {counts['ok']:>4} {counts['differs']:>8} {counts['error']:>6} {counts['wrong']:>6} "
              f"{counts['hung']:>5} {percentile(answered, 0.5):>9.2f} {p99:>7.2f} {p99 / base_p99:>10.2f}")  # fmt: skip
        for o in sorted(outcomes, key=lambda o: -o.seconds)[:3]:
            print(
                f"       slowest: {o.seconds:.2f} s, sent {o.started - fault_at:+.2f} s from the fault, {o.kind}"
            )
        for o in outcomes:
            if o.kind != "answer":
                print(f"       {o.kind} ({'stream' if o.streamed else 'plain'}, {o.seconds:.1f} s): {o.text}")


if __name__ == "__main__":
    main()
