"""A split across NATs: decode over a punched link and a relayed one, against a direct link.

Three NAT labs (tests/natlab.py) side by side, each with a public member A and members B and C
behind routers R1 and R2, differing only in the routers:

    direct    plain routers, no NAT: B and C dial each other's own addresses
    punched   endpoint-independent NATs on both: B and C punch a direct link through them
    relayed   C behind a symmetric NAT: B and C link through A, which copies their QUIC packets

In each, C serves SmolLM2-135M Q4_1 with `--split` and B is its worker (A offers 1 MB, so it can
hold no layer), so every decoded token crosses the B-C link; one llama.cpp thread per process.
Measured, alternating the labs each round:

    decode tok/s   streamed completion on C's API (the split host), as a ratio to direct
    round trip     a 1-token completion asked on B's API: B -> link -> C (-> B's layers) -> B
    link RTT       the smallest ping RTT B's status shows for C
    join -> link   from B linking to A (its inviter) to B's link with C on the expected path,
                   polling B's status every 20 ms

    sudo .venv/bin/python -m benchmarks.bench_nat [--rounds 10] [--tokens 96] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import median, timed_stream
from tests.gguf_fixtures import write_dialect_gguf
from tests.harness import NodeProcess, stop_all
from tests.natlab import Lab, NamespaceThread, NatKind, nat_lab

MODEL = "SmolLM2-135M"
STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."
# path -> (R1's kind, R2's kind)
TOPOLOGIES: dict[str, tuple[NatKind, NatKind]] = {
    "direct": ("none", "none"),
    "punched": ("eim", "eim"),
    "relayed": ("eim", "symmetric"),
}
THREADS = ["--threads", "1"]
SMALL = ["--ctx-size", "512", "--parallel", "1"]


@dataclass
class Setup:
    """One lab with its three nodes, and what was measured there."""

    path: str
    lab: Lab
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    threads: dict[str, NamespaceThread] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    join_to_link_s: float = 0.0
    link_poll_s: float = 0.0  # the resolution of join_to_link_s
    start_to_link_s: float = 0.0
    decode: list[float] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    rtt_ms: float | None = None

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self.threads[name].call(fn, *args)


def _peer(status: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    return next((p for p in status["peers"] if p["node_id"] == node_id), None)


def _split_ready(c_id: str, b_id: str) -> Callable[[dict[str, Any]], bool]:
    def check(s: dict[str, Any]) -> bool:
        rows = [m for m in s["models"] if m["local"] and m["name"] == MODEL]
        return (
            bool(rows)
            and rows[0].get("mode") == "split"
            and rows[0]["ready"]
            and [sh["node_id"] for sh in rows[0]["shards"]] == [c_id, b_id]
        )

    return check


def _time_link(b: NodeProcess, a_id: str, c_id: str, path: str, started: float) -> tuple[float, float, float]:
    """(join -> link, start -> link, the poll's resolution) in seconds, polling B's status (run
    inside B's namespace). When one poll shows both links, join -> link is below the resolution."""
    joined = None
    previous = started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            s = b.status()
            now = time.monotonic()
            a, c = _peer(s, a_id), _peer(s, c_id)
            if joined is None and a is not None and a["connected"]:
                joined = now
            if joined is not None and c is not None and c["connected"]:
                if c.get("path") != path:
                    raise RuntimeError(f"B linked to C on path {c.get('path')!r}, not {path!r}")
                return now - joined, now - started, now - previous
            previous = now
        time.sleep(0.02)
    raise RuntimeError(f"B never linked to C\n{b.log()}")


def start(setup: Setup, tiny: Path, tmp: Path) -> None:
    lab = setup.lab
    for name, ns in (("a", lab.a), ("b", lab.b), ("c", lab.c)):
        setup.threads[name] = NamespaceThread(ns)
    nodes = setup.nodes
    nodes["a"] = NodeProcess(
        ["--model", str(tiny), "--max-vram", "0.001", *SMALL], tmp / "a", prefix=lab.prefix(lab.a)
    ).start()
    token = setup.call("a", nodes["a"].wait_serving)["invite_token"]
    setup.ids["a"] = setup.call("a", nodes["a"].status)["node_id"]
    nodes["c"] = NodeProcess(
        ["--join", token, "--split", "--model", MODEL, "--max-vram", "0.6", *SMALL, *THREADS],
        tmp / "c", prefix=lab.prefix(lab.c),
    ).start()  # fmt: skip
    setup.ids["c"] = setup.call("c", nodes["c"].wait_serving, 120)["node_id"]  # alone: solo
    started = time.monotonic()
    nodes["b"] = NodeProcess(
        ["--join", token, "--max-vram", "0.5", *THREADS], tmp / "b", prefix=lab.prefix(lab.b)
    ).start()
    setup.join_to_link_s, setup.start_to_link_s, setup.link_poll_s = setup.call(
        "b", _time_link, nodes["b"], setup.ids["a"], setup.ids["c"], setup.path, started
    )
    setup.ids["b"] = setup.call("b", nodes["b"].status)["node_id"]


def wait_split(setup: Setup) -> None:
    c = setup.nodes["c"]
    setup.call("c", c.wait_for, _split_ready(setup.ids["c"], setup.ids["b"]), 180, "the split of C and B")
    peer = _peer(setup.call("b", setup.nodes["b"].status), setup.ids["c"])
    assert peer is not None and peer.get("path") == setup.path, peer


def _round_trip_ms(api: str, client: httpx.Client) -> float:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    t0 = time.perf_counter()
    r = client.post(f"{api}/v1/completions", json=body, timeout=120)
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def measure_round(setup: Setup, tokens: int, requests: int) -> None:
    c_api, b_api = setup.nodes["c"].api, setup.nodes["b"].api

    def decode() -> float:
        with httpx.Client() as client:
            return timed_stream(c_api, MODEL, STORY, tokens, client).decode_tok_s

    def round_trips() -> list[float]:
        with httpx.Client() as client:
            return [_round_trip_ms(b_api, client) for _ in range(requests)]

    setup.decode.append(setup.call("c", decode))
    setup.round_trip_ms += setup.call("b", round_trips)


def warm_up(setup: Setup) -> None:
    """One request of each kind first: connections, caches and the worker's graph warm."""
    c_api, b_api = setup.nodes["c"].api, setup.nodes["b"].api

    def on_c() -> None:
        with httpx.Client() as client:
            timed_stream(c_api, MODEL, STORY, 8, client)

    def on_b() -> None:
        with httpx.Client() as client:
            _round_trip_ms(b_api, client)

    setup.call("c", on_c)
    setup.call("b", on_b)


def report(setups: list[Setup], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table; the figures as a dict. "vs direct" is the median of each round's ratio to
    the direct lab's decode in that round (paired: the machine's load drifts between rounds)."""
    direct = next((s for s in setups if s.path == "direct"), None)
    print(
        f"{MODEL} Q4_1 split between B and C behind NAT routers (C hosts, B holds the last layers), "
        f"1 thread each; {args.rounds} rounds alternating the labs; {args.tokens} decode tokens; "
        f"round trip = a 1-token completion on B's API ({args.requests} per round); medians"
    )
    print(f"{'path':<9}{'decode tok/s':>14}{'vs direct':>11}{'round trip ms':>15}{'link RTT ms':>13}"
          f"{'join->link s':>14}{'start->link s':>15}")  # fmt: skip
    out: dict[str, Any] = {}
    for s in setups:
        dec, rt = median(s.decode), median(s.round_trip_ms)
        ratio = median([x / d for x, d in zip(s.decode, direct.decode, strict=True)]) if direct else None
        rtt = f"{s.rtt_ms:.2f}" if s.rtt_ms is not None else "-"
        print(
            f"{s.path:<9}{dec:>14.1f}{(f'{ratio:.3f}x' if ratio else '-'):>11}{rt:>15.1f}{rtt:>13}"
            f"{_join_text(s):>14}{s.start_to_link_s:>15.2f}"
        )
        out[s.path] = {
            "decode_tok_s": dec, "decode_runs": s.decode, "vs_direct": ratio,
            "round_trip_ms": rt, "round_trip_runs_ms": s.round_trip_ms, "link_rtt_ms": s.rtt_ms,
            "join_to_link_s": s.join_to_link_s, "link_poll_s": s.link_poll_s, "start_to_link_s": s.start_to_link_s,
        }  # fmt: skip
    return out


def _join_text(s: Setup) -> str:
    """join -> link; "<x" when the poll that first showed B linked to A also showed C."""
    return f"<{s.link_poll_s:.2f}" if s.join_to_link_s == 0 else f"{s.join_to_link_s:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96, help="decode tokens per streamed completion")
    ap.add_argument("--requests", type=int, default=5, help="1-token requests per round (round trip)")
    ap.add_argument("--paths", default=",".join(TOPOLOGIES), help="labs to build, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", type=Path, help="keep the nodes' state directories (and logs) here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces and nftables)")
    paths = [p for p in args.paths.split(",") if p]
    setups: list[Setup] = []
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        tiny = write_dialect_gguf(tmp / "tiny.gguf", "", ["</s>"], "</s>")
        try:
            for path in paths:
                b_nat, c_nat = TOPOLOGIES[path]
                setup = Setup(path, stack.enter_context(nat_lab(c_nat=c_nat, b_nat=b_nat)))
                setups.append(setup)
                start(setup, tiny, tmp / path)
                print(f"{path}: B linked to C {_join_text(setup)} s after joining", flush=True)
            for setup in setups:
                wait_split(setup)
                warm_up(setup)
                print(f"{setup.path}: split ready", flush=True)
            for i in range(args.rounds):
                for setup in setups if i % 2 == 0 else reversed(setups):
                    measure_round(setup, args.tokens, args.requests)
            for setup in setups:
                peer = _peer(setup.call("b", setup.nodes["b"].status), setup.ids["c"])
                setup.rtt_ms = peer.get("rtt_min_ms") if peer is not None else None
        finally:
            for setup in setups:
                with contextlib.suppress(AssertionError):
                    stop_all(setup.nodes.values())
                for thread in setup.threads.values():
                    thread.close()
        out = report(setups, args)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
