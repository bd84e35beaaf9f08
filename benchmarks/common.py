"""Shared measuring helpers for the benchmarks: one streamed request, timed at the client."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class StreamTiming:
    ttft_s: float  # request sent -> first token received
    tokens: int
    decode_tok_s: float  # tokens after the first, per second


def timed_stream(
    base_url: str,
    model: str,
    prompt: str,
    n_tokens: int,
    client: httpx.Client,
    extra: dict[str, Any] | None = None,
) -> StreamTiming:
    """Stream a completion of exactly `n_tokens` tokens and time it at the client."""
    body = {"model": model, "prompt": prompt, "max_tokens": n_tokens, "min_tokens": n_tokens,
            "temperature": 0, "stream": True, **(extra or {})}  # fmt: skip
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with client.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices"):
                now = time.perf_counter()
                if tokens == 0:
                    first = now
                last = now
                tokens += 1
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return StreamTiming(first - t0, tokens, decode)


def median(values: list[float]) -> float:
    return statistics.median(values)
