"""Real coding agents against a real node: each agent's prompt size and its first and second
turn's time to first token.

One node serves SmolLM2-135M on loopback with one slot, so an agent's second turn can reuse its
first turn's prompt from the slot; agents run one after another. Each agent is configured by
`mesh-llm codex/claude --write` into a temporary HOME and runs non-interactively: a first turn,
then a second that continues the same session (`codex exec resume --last`, `claude -p --continue`).
Figures come from the node's access log: prompt tokens as the model counted them, and the time
from the request's arrival to its first generated token.

    .venv/bin/python -m benchmarks.bench_agents [--agents codex,claude-bare,claude] [--ctx-size 32768]

`claude` runs Claude Code with its default tools (~21k tokens of prompt: minutes of prefill on a
CPU), `claude-bare` with `--tools ""`. The agents come from bash bundle/install-agents.sh.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from tests.harness import NodeProcess, access_records, agent_path, configure_agent, run_agent, stop_all

MODEL = "SmolLM2-135M"
TURNS = ("Reply with one word: hello", "Now reply with one word: goodbye")


def _commands(agent: str, turn: int) -> tuple[str, list[str]]:
    """(which configuration, argv) for one turn of one agent."""
    prompt = TURNS[turn]
    if agent == "codex":
        codex = str(agent_path("codex"))
        first = [codex, "exec", "--skip-git-repo-check", prompt]
        return "codex", first if turn == 0 else [
            codex,
            "exec",
            "--skip-git-repo-check",
            "resume",
            "--last",
            prompt,
        ]
    claude = [str(agent_path("claude")), "-p", prompt, *(["--continue"] if turn else [])]
    return "claude", [*claude, "--tools", ""] if agent == "claude-bare" else claude


def run(agents: list[str], ctx_size: int, timeout_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
        root = Path(tmp)
        node = NodeProcess(
            ["--model", MODEL, "--ctx-size", str(ctx_size), "--parallel", "1", "--log-format", "json"],
            root / "node",
        ).start()
        try:
            node.wait_serving()
            for agent in agents:
                home, work = root / agent / "home", root / agent / "work"
                for turn in range(len(TURNS)):
                    tool, argv = _commands(agent, turn)
                    if turn == 0:
                        configure_agent(tool, node, home)
                    before = len(access_records(node))
                    done = run_agent(argv, home, work, timeout_s)
                    records = access_records(node)[before:]
                    answer = done.stdout.strip().splitlines()
                    rows.append({
                        "agent": agent, "turn": turn + 1, "exit": done.code, "seconds": round(done.seconds, 1),
                        "requests": [
                            {k: r.get(k) for k in ("path", "status", "prompt_tokens", "completion_tokens", "ttft_s")}
                            for r in records
                        ],
                        "answer": answer[-1][:80] if answer else "",
                        "stderr_tail": "" if done.code == 0 else done.stderr[-600:],
                    })  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_all([node])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--agents", default="codex,claude-bare,claude", help="comma-separated: codex, claude-bare, claude"
    )
    p.add_argument(
        "--ctx-size", type=int, default=32768, help="context per slot (Claude Code's default prompt is ~21k)"
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one agent turn may take")
    args = p.parse_args()
    rows = run([a.strip() for a in args.agents.split(",") if a.strip()], args.ctx_size, args.timeout)
    print(f"\n{'agent':<12} {'turn':>4} {'exit':>4} {'prompt tok':>10} {'ttft s':>8} {'turn s':>8}")
    for row in rows:
        first = row["requests"][0] if row["requests"] else {}
        print(
            f"{row['agent']:<12} {row['turn']:>4} {row['exit']:>4} {first.get('prompt_tokens') or '-':>10} "
            f"{first.get('ttft_s') or '-':>8} {row['seconds']:>8}"
        )


if __name__ == "__main__":
    main()
