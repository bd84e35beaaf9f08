"""The KV prefix cache and prefill through a real node: a long prompt's prefill progress shows per
slot in status, and a conversation comes back warm after the node restarts on its state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"
CACHE = ["--cache-ram", "0.2", "--cache-disk", "0.2"]


def _chat(node: NodeProcess, messages: list[dict[str, str]], max_tokens: int = 8) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{node.api}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _engine(status: dict[str, Any]) -> dict[str, Any]:
    (m,) = [m for m in status["models"] if m["local"]]
    return dict(m["slots"] or {})


def _cache(status: dict[str, Any]) -> dict[str, Any]:
    return dict(_engine(status).get("prefix_cache") or {})


def _prefilling(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [s["prefill"] for s in _engine(status).get("slots", []) if s.get("prefill")]


def test_status_shows_a_long_prompts_prefill_progress(tmp_path: Path) -> None:
    node = NodeProcess(["--model", MODEL, "--parallel", "2", *CACHE], tmp_path / "a").start()
    try:
        node.wait_serving()
        # About 3,000 tokens nobody has sent before: many 256-token chunks of prefill on any CPU.
        words = " ".join(f"item{n} weighs {n * 7 % 97} grams;" for n in range(380))
        body = {
            "model": MODEL, "messages": [{"role": "user", "content": f"Heaviest? {words}"}],
            "max_tokens": 1, "stream": True,
        }  # fmt: skip
        seen: list[dict[str, Any]] = []
        with httpx.stream("POST", f"{node.api}/v1/chat/completions", json=body, timeout=300) as r:
            assert r.status_code == 200
            # Two different points of one prefill, each part way: progress, not a fixed figure.
            node.wait_for(
                lambda s: _progress(s, seen) and len({p["done"] for p in seen}) >= 2, 300, "prefill progress"
            )
        # The client left: the engine drops the request and the slot shows no prefill any more.
        node.wait_for(lambda s: not _prefilling(s), 30, "no prefill once the client left")
        assert len({p["total"] for p in seen}) == 1 and seen[0]["total"] > 2000, seen
    finally:
        stop_all([node])


def _progress(status: dict[str, Any], seen: list[dict[str, Any]]) -> bool:
    """Note the slots part way through a prefill; whether there are any."""
    now = [p for p in _prefilling(status) if 0 < p["done"] < p["total"]]
    seen += now
    return bool(now)


def test_a_conversation_is_warm_after_the_node_restarts(tmp_path: Path) -> None:
    rules = " ".join(f"Rule {k}: answer in at most {k + 3} words about topic {k * 11}." for k in range(40))
    system = {"role": "system", "content": f"You are the helper of project Kestrel. {rules}"}
    turn1 = [system, {"role": "user", "content": "What is rule 3?"}]
    node = NodeProcess(["--model", MODEL, *CACHE], tmp_path / "a").start()
    try:
        node.wait_serving()
        first = _chat(node, turn1)
        # The engine saves the finished conversation once idle; wait until its file is written.
        node.wait_for(lambda s: _cache(s).get("disk_writes", 0) >= 1, 60, "a file written")
        assert node.stop() == 0
        assert list((tmp_path / "a" / "kv").rglob("*.kv"))

        node = NodeProcess(["--model", MODEL, *CACHE], tmp_path / "a").start()
        node.wait_serving()
        node.wait_for(lambda s: _cache(s).get("disk_entries", 0) >= 1, 30, "the saved file found")
        reply = first["choices"][0]["message"]["content"]
        turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "And rule 4?"}]
        second = _chat(node, turn2)
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= first["usage"]["prompt_tokens"] - 1, (cached, first["usage"], second["usage"])
        hits = node.wait_for(lambda s: _cache(s).get("hits", 0) >= 1, 10, "a hit counted")
        assert _cache(hits)["disk_rejected"] == 0
    finally:
        stop_all([node])
