"""The console in real headless Chromium (Debian's, driven by Playwright) against real nodes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.harness import ARTIFACTS, NodeProcess, stop_all


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_two_node_mesh_live_view_chat_and_a_node_leaving(tmp_path: Path, page: Page) -> None:
    a = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        b = NodeProcess(["--join", token], tmp_path / "b").start()
        nodes.append(b)
        a_id, b_id = a.status()["short_id"], b.wait_for(lambda s: len(s["peers"]) == 1, 30)["short_id"]
        page.goto(a.console)
        expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
        topology = page.locator("#topology")
        expect(topology).to_contain_text(a_id, timeout=10_000)
        expect(topology).to_contain_text(b_id, timeout=10_000)
        expect(topology).to_contain_text("SmolLM2-135M")
        expect(page.locator("#peers")).to_contain_text(b_id)
        expect(page.locator("#tiles")).to_contain_text(token[:12])
        slots = page.locator('[data-tile="slots"]')
        expect(slots).to_contain_text("0/4")  # the engine's four slots, all free
        expect(slots).to_contain_text("SmolLM2-135M: 0/4 busy")
        shot(page, "mesh")

        # Chat streams token by token through :9337 and reports speed and time to first token.
        expect(page.locator("#model-picker")).to_contain_text("SmolLM2-135M")
        page.fill("#max-tokens", "200")
        page.fill("#prompt", "Write a short poem about the sea.")
        page.click("#send")
        answer = page.locator(".msg.assistant").last
        expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
        # Streamed: the answer arrived as many content events, each appended as it came (on a
        # loaded machine the browser may read them all at once, so count events, not time).
        assert int(answer.get_attribute("data-chunks") or 0) > 10
        assert answer.locator(".msg-text").inner_text().strip()
        expect(slots).to_contain_text("cached ", timeout=10_000)
        meta = page.locator(".msg.assistant .msg-meta").last
        expect(meta).to_contain_text("tok/s")
        expect(meta).to_contain_text("TTFT")
        shot(page, "chat")

        # A long prompt's prefill shows on its slot while it runs (the client leaves part way).
        words = " ".join(f"item{n} weighs {n * 7 % 97} grams;" for n in range(380))
        body = {
            "model": "SmolLM2-135M", "messages": [{"role": "user", "content": words}],
            "max_tokens": 1, "stream": True,
        }  # fmt: skip
        with httpx.stream("POST", f"{a.api}/v1/chat/completions", json=body, timeout=300) as r:
            assert r.status_code == 200
            progress = slots.locator("[data-prefill]")
            expect(progress).to_contain_text(re.compile(r"prefill [\d,]+ / [\d,]{5}"), timeout=60_000)
            shot(page, "prefill")
        expect(progress).to_have_count(0, timeout=30_000)

        # B leaves: the page drops it without a reload.
        b.stop()
        expect(topology).not_to_contain_text(b_id, timeout=10_000)
        expect(page.locator("#peers")).not_to_contain_text(b_id)
        shot(page, "node-left")

        # The model server dies: the chat says so clearly instead of hanging.
        os.kill(a.status()["models"][0]["pid"], signal.SIGKILL)
        a.wait_for(lambda s: not s["models"][0]["ready"], 10, "the crash")
        page.fill("#prompt", "Hello?")
        page.click("#send")
        error = page.locator(".msg.error").last
        expect(error).to_be_visible(timeout=15_000)
        expect(error).to_contain_text("SmolLM2-135M")
        shot(page, "model-unavailable")
    finally:
        stop_all(nodes)


def test_idle_node_shows_read_only_instructions(tmp_path: Path, page: Page) -> None:
    node = NodeProcess([], tmp_path / "idle").start()
    try:
        node.wait_for(lambda s: s["state"] == "idle", 20, "idle")
        page.goto(node.console)
        idle = page.locator("#idle")
        expect(idle).to_be_visible(timeout=10_000)
        expect(idle).to_contain_text("mesh-llm --join TOKEN")
        expect(idle).to_contain_text("mesh-llm --model NAME")
        expect(page.locator("#chat")).to_be_hidden()
        shot(page, "idle")
    finally:
        node.stop()


def test_lost_connection_is_shown_and_recovers(tmp_path: Path, page: Page) -> None:
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path / "n").start()
    try:
        node.wait_serving()
        page.goto(node.console)
        badge = page.locator("#connection")
        expect(badge).to_have_text("live", timeout=10_000)
        node.stop()
        expect(badge).to_contain_text("reconnecting", timeout=15_000)
        shot(page, "reconnecting")
        restarted = NodeProcess(["--model", "SmolLM2-135M"], node.state_dir, api_port=node.api_port,
                                console_port=node.console_port).start()  # fmt: skip
        try:
            restarted.wait_serving()
            expect(badge).to_have_text("live", timeout=30_000)
        finally:
            restarted.stop()
    finally:
        node.stop()


def test_split_model_shows_each_nodes_layer_range(tmp_path: Path, page: Page) -> None:
    a = NodeProcess(["--split", "--model", "SmolLM2-135M"], tmp_path / "a").start()
    nodes = [a]
    try:
        token = a.wait_serving()["invite_token"]
        nodes.append(NodeProcess(["--join", token], tmp_path / "b").start())
        a.wait_for(
            lambda s: any(m.get("mode") == "split" and m["ready"] for m in s["models"]), 60, "the split"
        )
        page.goto(a.console)
        topology = page.locator("#topology")
        expect(topology).to_contain_text("L0\u201314", timeout=10_000)  # en dash, as the page writes it
        expect(topology).to_contain_text("L15\u201329")
        expect(page.locator("#peers")).to_contain_text("worker")
        shot(page, "split")

        # The worker's own console shows the layers it holds (from status.worker_of) on its own card.
        b = nodes[1]
        page.goto(b.console)
        own = page.locator(f'#topology [data-node-id="{b.status()["node_id"]}"]')
        expect(own).to_contain_text("L15\u201329", timeout=10_000)
        expect(own).to_have_attribute("data-tone", "info")
        host_card = page.locator(f'#topology [data-node-id="{a.status()["node_id"]}"]')
        expect(host_card).to_contain_text("L0\u201314")
        shot(page, "split-worker")
    finally:
        stop_all(nodes)
