"""mesh-llm's engine vs llama-cpp-python's own server on the same model, side by side.

Both servers run as subprocesses on loopback with the same GGUF, context and thread counts;
rounds alternate between them. Measured at the client:

1. one stream: decode tokens/s and time to first token;
2. four simultaneous streams: aggregate tokens/s (all tokens / wall time) against one stream,
   and when the last of the four requests sees its first token;
3. the second turn of a ~1,500-token conversation: time to first token against the same
   prompt cold (a fresh prefix), on our engine (prompt reuse) and on theirs.

    .venv/bin/python -m benchmarks.bench_engine [--rounds 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import median, timed_stream
from tests.harness import free_port, smollm2_path

MODEL = "SmolLM2-135M"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
NO_EOS = {"0": -100, "2": -100}  # both servers take logit_bias: every answer runs to max_tokens


def _start_ours(path: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    cmd = [sys.executable, "-m", "mesh_llm.serving.model_server_main", "--fd", str(sock.fileno()),
           "--model", str(path), "--alias", MODEL, "--n-ctx", "4096", "--parallel", "4"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    return proc, url


def _start_theirs(path: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cores = os.cpu_count() or 2
    # The same thread counts as our engine; interrupt_requests off so overlapping streams are
    # served in turn instead of cut off (its default would end three of four streams empty).
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", MODEL,
           "--n_ctx", "4096", "--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False",
           "--n_threads", str(max(1, cores // 2)), "--n_threads_batch", str(cores)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server at {url} exited"
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _stream(url: str, body: dict[str, Any], path: str, t0: float) -> tuple[float, float, int]:
    """(first token time, last token time, tokens) relative to t0, for one streamed request."""
    first = last = 0.0
    tokens = 0
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                now = time.perf_counter() - t0
                first = first or now
                last = now
                tokens += 1
    return first, last, tokens


def _one_stream(url: str, tokens: int) -> tuple[float, float]:
    with httpx.Client() as client:
        t = timed_stream(url, MODEL, PROMPT, tokens, client, extra={"logit_bias": NO_EOS})
    return t.decode_tok_s, t.ttft_s


def _four_streams(url: str, tokens: int) -> tuple[float, float]:
    """(aggregate tokens/s, last first-token time in s) for four streams sent at once."""
    results: list[tuple[float, float, int]] = []
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "logit_bias": NO_EOS}
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=lambda: results.append(_stream(url, body, "/v1/completions", t0)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
        time.sleep(0.005)  # a defined arrival order; the fourth arrives 15 ms after the first
    for t in threads:
        t.join()
    total = sum(n for _, _, n in results)
    end = max(last for _, last, _ in results)
    return total / end, max(first for first, _, _ in results)


def _conversation() -> list[dict[str, str]]:
    facts = " ".join(
        f"Fact {i}: the lighthouse on island {i} is painted {('red', 'white', 'blue')[i % 3]}."
        for i in range(88)
    )
    return [
        {"role": "system", "content": f"Session {uuid.uuid4().hex}. You are a careful assistant. {facts}"},
        {"role": "user", "content": "Which colour is the lighthouse on island 7?"},
    ]


def _second_turn(url: str) -> tuple[float, float, int]:
    """(cold TTFT, second-turn TTFT, prompt tokens of the second turn)."""
    messages = _conversation()
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0}
    t0 = time.perf_counter()
    cold, _, _ = _stream(url, body, "/v1/chat/completions", t0)
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
    turn2 = [*messages, {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
             {"role": "user", "content": "And on island 8?"}]  # fmt: skip
    n_prompt = int(
        httpx.post(
            f"{url}/v1/chat/completions", json={**body, "messages": turn2, "max_tokens": 1}, timeout=600
        ).json()["usage"]["prompt_tokens"]
    )
    # The exact second turn again, after the first turn was answered once more to put it back.
    httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    t1 = time.perf_counter()
    warm, _, _ = _stream(url, {**body, "messages": turn2}, "/v1/chat/completions", t1)
    return cold, warm, n_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    path = smollm2_path()
    runs: dict[str, dict[str, list[float]]] = {"ours": {}, "theirs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_url = _start_ours(path, Path(tmp) / "ours.log")
        theirs, theirs_url = _start_theirs(path, Path(tmp) / "theirs.log")
        try:
            _wait_up(ours_url, ours)
            _wait_up(theirs_url, theirs)
            servers = [("ours", ours_url), ("theirs", theirs_url)]
            for _, url in servers:  # warm-up
                _one_stream(url, 8)
            for i in range(args.rounds):
                for name, url in servers if i % 2 == 0 else list(reversed(servers)):
                    r = runs[name]
                    tps, ttft = _one_stream(url, args.tokens)
                    agg, fourth = _four_streams(url, args.tokens)
                    cold, warm, n_prompt = _second_turn(url)
                    for key, value in (("tps", tps), ("ttft", ttft), ("agg", agg), ("fourth", fourth),
                                       ("cold", cold), ("warm", warm), ("n_prompt", n_prompt)):  # fmt: skip
                        r.setdefault(key, []).append(value)
        finally:
            for proc in (ours, theirs):
                proc.terminate()
                proc.wait(10)
    m = {name: {k: median(v) for k, v in r.items()} for name, r in runs.items()}
    o, t = m["ours"], m["theirs"]
    print(f"rounds={args.rounds} tokens={args.tokens} model={MODEL} (medians)")
    print(f"{'':<34}{'ours':>10}{'llama-cpp-python':>18}{'ratio':>9}")
    print(f"{'1 stream decode tok/s':<34}{o['tps']:>10.1f}{t['tps']:>18.1f}{o['tps'] / t['tps']:>9.2f}")
    print(
        f"{'1 stream TTFT ms':<34}{o['ttft'] * 1e3:>10.1f}{t['ttft'] * 1e3:>18.1f}{(o['ttft'] - t['ttft']) * 1e3:>+8.1f}ms"
    )
    print(f"{'4 streams aggregate tok/s':<34}{o['agg']:>10.1f}{t['agg']:>18.1f}{o['agg'] / t['agg']:>9.2f}")
    print(f"{'4 streams / 1 stream':<34}{o['agg'] / o['tps']:>10.2f}{t['agg'] / t['tps']:>18.2f}")
    print(f"{'4th request first token s':<34}{o['fourth']:>10.2f}{t['fourth']:>18.2f}")
    print(f"{'cold prompt TTFT ms':<34}{o['cold'] * 1e3:>10.1f}{t['cold'] * 1e3:>18.1f}")
    print(f"{'second turn TTFT ms':<34}{o['warm'] * 1e3:>10.1f}{t['warm'] * 1e3:>18.1f}")
    print(f"{'cold / second turn':<34}{o['cold'] / o['warm']:>10.1f}{t['cold'] / t['warm']:>18.1f}")
    print(f"second-turn prompt: {o['n_prompt']:.0f} tokens")


if __name__ == "__main__":
    main()
