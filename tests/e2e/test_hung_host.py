"""A frozen host is failed over: two hosts of SmolLM2-135M behind a `--client` node, the machine
loaded by CPU burners, one host stopped with SIGSTOP. Its QUIC connection may stay open; the
client sees it stop answering pings, routes around it, and moves the requests it already sent
there, which have no content yet, to the other host. Every request gets its answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import NodeProcess, stop_all

MODEL = "SmolLM2-135M"
BURN = "while True: pass"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """Hosts A and B of one model and a client C joined to them."""
    root: Path = tmp_path_factory.mktemp("hung")
    a = NodeProcess(["--model", MODEL], root / "a").start()
    nodes = {"a": a}
    try:
        token = a.wait_serving()["invite_token"]
        nodes["b"] = NodeProcess(["--model", MODEL, "--join", token], root / "b").start()
        nodes["c"] = NodeProcess(["--client", "--join", token], root / "c").start()
        nodes["b"].wait_serving()
        nodes["c"].wait_for(lambda s: len([m for m in s["models"] if m["ready"]]) == 2, 60, "both hosts on C")
        yield nodes
    finally:
        stop_all(nodes.values())


def failovers(c: NodeProcess) -> int:
    """Requests C moved off a host that had sent no content (its warnings)."""
    return c.log().count("failed before answering")


def ask(c: NodeProcess, i: int) -> str:
    """One streamed chat request through C (a conversation of its own); its text."""
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": f"You are helper {i}."},
            {"role": "user", "content": "Hi."},
        ],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{c.api}/v1/chat/completions", json=body, timeout=240) as r:
        assert r.status_code == 200, r.read()
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events and events[-1] == "data: [DONE]", events
    assert not any('"error"' in e for e in events), events
    return "".join(events)


def test_requests_to_a_frozen_host_fail_over_on_a_loaded_machine(mesh: dict[str, NodeProcess]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    assert b.proc is not None
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(max(2, os.cpu_count() or 2))]
    before = failovers(c)
    try:
        os.kill(b.proc.pid, signal.SIGSTOP)
        # Sent at once, before C can know: about half go to B first (equal loads alternate), get
        # no content, and must be moved to A.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: ask(c, i), range(8)))
        assert len(answers) == 8
        moved = failovers(c) - before
        assert moved >= 1, c.log()[-3000:]
        # From now on B is suspect (or gone): new requests go straight to A.
        for i in range(8, 11):
            ask(c, i)
        assert failovers(c) - before == moved
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
        for burner in burners:
            burner.kill()
            burner.wait()
    assert a.proc is not None and a.proc.poll() is None


def test_a_slow_prefill_streams_keepalives_before_its_first_token(mesh: dict[str, NodeProcess]) -> None:
    c = mesh["c"]
    # About 2,000 tokens no host has seen (no prefix to reuse): seconds of prefill on any CPU.
    words = " ".join(f"item{n} weighs {n * 7 % 97} grams;" for n in range(250))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Which item is heaviest? {words}"}],
        "max_tokens": 2,
        "stream": True,
    }
    with httpx.stream("POST", f"{c.api}/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert ": keep-alive" in lines, lines[:5]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert lines.index(": keep-alive") < first_data  # keep-alives come before any of the answer
    assert lines[-1] == "data: [DONE]"


def test_a_stream_whose_host_freezes_after_its_first_content_ends_with_an_explicit_error(
    mesh: dict[str, NodeProcess],
) -> None:
    # Content already reached the client, so the request cannot move: it must end with the
    # error event a dead host gives, not hang and not stop silently short.
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 3000, "min_tokens": 3000, "stream": True}
    events: list[str] = []
    frozen: NodeProcess | None = None
    try:
        with httpx.stream("POST", f"{c.api}/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                events.append(line[5:].strip())
                if len(events) == 3:
                    # Freeze whichever host is answering it (status reads its slots about
                    # once a second: wait for one to show the request).
                    deadline = time.monotonic() + 60
                    while (frozen := next((n for n in (a, b) if busy_slots(n) > 0), None)) is None:
                        assert time.monotonic() < deadline, "neither host shows the request"
                        time.sleep(0.2)
                    assert frozen.proc is not None
                    os.kill(frozen.proc.pid, signal.SIGSTOP)
    finally:
        if frozen is not None and frozen.proc is not None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen is not None and len(events) > 3
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    error = json.loads(events[-2])["error"]
    assert error["code"] == "backend_failed", error


def busy_slots(host: NodeProcess) -> int:
    """Slots of `host`'s own model servers decoding now (requests from any node)."""
    rows = [m for m in host.status()["models"] if m.get("local") and isinstance(m.get("slots"), dict)]
    return sum(int(m["slots"].get("slots_busy", 0)) for m in rows)
