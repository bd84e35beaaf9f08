"""Real coding agents from npm against a real node: Codex CLI (OpenAI Responses) and Claude Code
(Anthropic Messages), each for one turn, offline, configured by `mesh-llm codex/claude --write`.

The demo model writes weak text; what is tested is the protocol: the agent exits 0 with an answer,
and the node's access log shows its requests answered 200. Prompt sizes (SmolLM2 tokens, measured
by pointing each agent at a logging server): Codex 0.171 about 5.7k with the configuration
`mesh-llm codex` writes; Claude Code 2.1.197 about 20.8k with its default tools, 1.5k with
`--tools ""`. A cold 20k-token prefill takes this machine well over 5 minutes, so Claude Code runs
here without its tools, and with them in benchmarks/bench_agents.py.

Also here: the default context per slot, checked end to end (a node's one model gets its
training context), and the warning for a --ctx-size beyond it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    NodeProcess,
    access_records,
    agent_path,
    configure_agent,
    run_agent,
    stop_all,
)

MODEL = "SmolLM2-135M"
SMOLLM2_TRAINING_CTX = 8192
# Codex's prompt (~5.7k tokens) and its answer; beyond SmolLM2's training context, which still
# decodes (RoPE past it) and makes the node warn, which a test below checks.
AGENT_CTX = 16384
AGENT_TIMEOUT_S = 480.0  # a cold 5.7k-token prefill took 214 s here on a loaded machine
PROMPT = "Reply with one word: hello"


@pytest.fixture(scope="module")
def agent_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(
        ["--model", MODEL, "--ctx-size", str(AGENT_CTX), "--parallel", "1", "--log-format", "json"],
        tmp_path_factory.mktemp("agents"),
    ).start()
    try:
        node.wait_serving()
        yield node
    finally:
        stop_all([node])


def _answered(node: NodeProcess, before: int, path: str) -> list[dict[str, object]]:
    records = access_records(node)[before:]
    return [r for r in records if str(r.get("path", "")).split("?")[0] == path]


def _failed(what: str, run: object, node: NodeProcess) -> str:
    tail = "\n".join(node.log().splitlines()[-40:])
    return f"{what}: {run}\n--- node log (tail) ---\n{tail}"


def test_codex_runs_a_turn_over_responses(agent_node: NodeProcess, tmp_path: Path) -> None:
    codex = agent_path("codex")
    home = tmp_path / "home"
    configure_agent("codex", agent_node, home)
    assert 'wire_api = "responses"' in (home / ".codex" / "config.toml").read_text()
    before = len(access_records(agent_node))
    run = run_agent(
        [str(codex), "exec", "--skip-git-repo-check", PROMPT], home, tmp_path / "work", AGENT_TIMEOUT_S
    )
    assert run.code == 0 and run.stdout.strip(), _failed("codex exec", run, agent_node)
    requests = _answered(agent_node, before, "/v1/responses")
    assert requests and all(r["status"] == 200 for r in requests), _failed("access log", requests, agent_node)


def test_claude_code_runs_a_turn_over_messages(agent_node: NodeProcess, tmp_path: Path) -> None:
    claude = agent_path("claude")
    home = tmp_path / "home"
    configure_agent("claude", agent_node, home)
    before = len(access_records(agent_node))
    run = run_agent([str(claude), "-p", PROMPT, "--tools", ""], home, tmp_path / "work", AGENT_TIMEOUT_S)
    assert run.code == 0 and run.stdout.strip(), _failed("claude -p", run, agent_node)
    requests = _answered(agent_node, before, "/v1/messages")
    assert requests and all(r["status"] == 200 for r in requests), _failed("access log", requests, agent_node)


def test_a_context_beyond_the_training_context_is_warned_about(agent_node: NodeProcess) -> None:
    assert f"exceed its training context ({SMOLLM2_TRAINING_CTX})" in agent_node.log()
    (row,) = [m for m in agent_node.status()["models"] if m["name"] == MODEL]
    assert row["slots"]["n_ctx_slot"] == AGENT_CTX  # given: kept, only warned about


def test_the_default_context_is_the_models_training_context(tmp_path: Path) -> None:
    node = NodeProcess(["--model", MODEL, "--parallel", "1"], tmp_path / "state", default_ctx=True).start()
    try:
        status = node.wait_for(
            lambda s: any((m.get("slots") or {}).get("n_ctx_slot") for m in s["models"]), 90, "slots"
        )
        (row,) = [m for m in status["models"] if m["name"] == MODEL]
        # 8192 unless this machine's free memory holds less for one slot: then the log says so.
        assert row["slots"]["n_ctx_slot"] == SMOLLM2_TRAINING_CTX
        server_log = (tmp_path / "state" / "logs" / f"{MODEL}.log").read_text()
        assert f"training context {SMOLLM2_TRAINING_CTX}" in server_log
        assert "exceed its training context" not in node.log()
    finally:
        stop_all([node])
