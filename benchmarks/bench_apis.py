"""Decode tokens/s and time to first token of the same answer through each API of a node.

Chat Completions, Responses and Messages all reach the model server as one chat request (the
proxy translates the other two); this measures what the translation costs. One real node serves
SmolLM2-135M on loopback; each round streams the same greedy answer through each API, in a
rotating order, so all three see the same machine state.

    .venv/bin/python -m benchmarks.bench_apis [--rounds 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import StreamTiming, median
from tests.harness import NodeProcess

MODEL = "SmolLM2-135M"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def _chat(tokens: int) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


def _responses(tokens: int) -> tuple[str, dict[str, Any]]:
    return "/v1/responses", {
        "model": MODEL, "input": PROMPT, "max_output_tokens": tokens, "temperature": 0, "stream": True,
    }  # fmt: skip


def _messages(tokens: int) -> tuple[str, dict[str, Any]]:
    return "/v1/messages", {
        "model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
        "temperature": 0, "stream": True,
    }  # fmt: skip


def _text_of(api: str, event: dict[str, Any]) -> bool:
    """Whether one SSE event of `api` carries generated text."""
    if api == "chat":
        return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])
    if api == "responses":
        return event.get("type") == "response.output_text.delta" and bool(event.get("delta"))
    return event.get("type") == "content_block_delta" and bool((event.get("delta") or {}).get("text"))


def _tokens_of(api: str, event: dict[str, Any]) -> int | None:
    """The completion token count, from the event that carries the usage."""
    if api == "chat" and event.get("usage"):
        return int(event["usage"]["completion_tokens"])
    if api == "responses" and event.get("type") in ("response.completed", "response.incomplete"):
        return int(event["response"]["usage"]["output_tokens"])
    if api == "messages" and event.get("type") == "message_delta":
        return int(event["usage"]["output_tokens"])
    return None


def timed(api: str, base: str, make: Callable[[int], tuple[str, dict[str, Any]]], tokens: int,
          client: httpx.Client) -> StreamTiming:  # fmt: skip
    path, body = make(tokens)
    t0 = time.perf_counter()
    first = last = 0.0
    count = 0
    with client.stream("POST", base + path, json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            if _text_of(api, event):
                now = time.perf_counter()
                first = first or now
                last = now
            count = _tokens_of(api, event) or count
    decode = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return StreamTiming(first - t0, count, decode)


APIS: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
    "chat": _chat,
    "responses": _responses,
    "messages": _messages,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    runs: dict[str, list[StreamTiming]] = {name: [] for name in APIS}
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(["--model", MODEL, "--ctx-size", "2048"], Path(tmp)).start()
        try:
            node.wait_serving()
            base = node.api.removesuffix("/v1")
            names = list(APIS)
            with httpx.Client() as client:
                for name in names:  # warm each path (and the slot's prompt)
                    timed(name, base, APIS[name], 8, client)
                for i in range(args.rounds):
                    for name in names[i % 3 :] + names[: i % 3]:
                        runs[name].append(timed(name, base, APIS[name], args.tokens, client))
        finally:
            node.stop()
    chat_tps = median([r.decode_tok_s for r in runs["chat"]])
    chat_ttft = median([r.ttft_s for r in runs["chat"]]) * 1000
    print(f"rounds={args.rounds} max tokens={args.tokens} model={MODEL} (medians)")
    print(f"{'api':<10}{'tokens':>7}{'decode tok/s':>14}{'TTFT ms':>10}{'vs chat':>9}{'TTFT +ms':>10}")
    for name, timings in runs.items():
        tps = median([r.decode_tok_s for r in timings])
        ttft = median([r.ttft_s for r in timings]) * 1000
        count = int(median([r.tokens for r in timings]))
        print(
            f"{name:<10}{count:>7}{tps:>14.1f}{ttft:>10.1f}{tps / chat_tps:>8.3f}x{ttft - chat_ttft:>+10.2f}"
        )


if __name__ == "__main__":
    main()
