"""A real node with --api-key: the console gives nothing away without the key, the page
unlocks with it, the CLI passes it, and a rebinding Host header is refused on both ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.harness import NodeProcess, wait_gone

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(
        ["--model", "SmolLM2-135M", "--api-key", KEY], tmp_path_factory.mktemp("keyed")
    ).start()
    try:
        yield node
    finally:
        pids = [c.pid for c in node.children()]
        node.stop()
        assert wait_gone(pids) == []


def _get(node: NodeProcess, path: str, **kw: object) -> httpx.Response:
    return httpx.get(f"{node.console}{path}", timeout=10, **kw)  # type: ignore[arg-type]


def test_without_the_key_the_console_answers_401_and_gives_no_token(keyed: NodeProcess) -> None:
    status = keyed.wait_serving()  # the harness sends the key
    assert status["invite_token"]
    for path in ("/api/status", "/api/events", "/api/plan?model=SmolLM2-135M"):
        r = _get(keyed, path)
        assert r.status_code == 401 and status["invite_token"] not in r.text, path
    for path, body in (
        ("/api/chat", {"model": "SmolLM2-135M", "messages": []}),
        ("/api/drop", {"model": "SmolLM2-135M"}),
    ):
        r = httpx.post(f"{keyed.console}{path}", json=body, timeout=10)
        assert r.status_code == 401, path
    assert _get(keyed, "/").status_code == 200  # the page, where the key is entered


def test_the_cli_passes_the_key_from_the_environment(keyed: NodeProcess) -> None:
    keyed.wait_serving()  # the harness sends the key
    cmd = [sys.executable, "-m", "mesh_llm", "status", "--console", str(keyed.console_port), "--json"]
    env = {**os.environ, "COLUMNS": "200"}
    denied = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in env.items() if k != "MESH_LLM_API_KEY"},
    )
    assert denied.returncode == 1 and "MESH_LLM_API_KEY" in denied.stdout + denied.stderr
    allowed = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**env, "MESH_LLM_API_KEY": KEY}
    )
    assert allowed.returncode == 0 and '"invite_token"' in allowed.stdout


def test_a_rebinding_host_header_is_refused_on_the_api_and_the_console(keyed: NodeProcess) -> None:
    keyed.wait_serving()  # the harness sends the key
    headers = {"host": "attacker.example", "authorization": f"Bearer {KEY}"}
    assert _get(keyed, "/api/status", headers=headers).status_code == 421
    assert httpx.get(f"{keyed.api}/v1/models", headers=headers, timeout=10).status_code == 421
    assert (
        httpx.get(
            f"{keyed.api}/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=10
        ).status_code
        == 200
    )


def test_the_page_asks_for_the_key_and_then_shows_the_mesh(keyed: NodeProcess, page: Page) -> None:
    keyed.wait_serving()  # the harness sends the key
    page.goto(keyed.console)
    expect(page.locator("#login")).to_be_visible(timeout=10_000)
    expect(page.locator("#connection")).to_have_text("locked")
    page.fill("#login-key", "wrong")
    page.click("#login-send")
    expect(page.locator("#login-error")).to_contain_text("not this node's API key")
    page.fill("#login-key", KEY)
    page.click("#login-send")
    expect(page.locator("#connection")).to_have_text("live", timeout=15_000)
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#topology")).to_contain_text("SmolLM2-135M")
    # The chat works through the console's relay with the session cookie alone.
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "Say hi.")
    page.click("#send")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=60_000)
