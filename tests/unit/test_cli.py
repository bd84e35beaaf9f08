"""The CLI's pure parts: help, JSON logs, client configurations, the runtime file, pasted tokens."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh_llm.cli import SUBCOMMANDS, main, node_parser
from mesh_llm.cli.clients import goose_provider, merge_opencode, opencode_config
from mesh_llm.cli.logs import JsonFormatter
from mesh_llm.peer.token import decode_tokens, new_mesh
from mesh_llm.runtime import RuntimeFile

STATUS = {
    "short_id": "ab12cd34",
    "api": {"url": "http://127.0.0.1:9337/v1", "auth": False},
    "models": [
        {"name": "SmolLM2-135M", "state": "ready", "ready": True, "slots": {"n_ctx_slot": 2048}},
        {"name": "Qwen2.5-32B", "state": "loading", "slots": None},
        {"name": "Broken", "state": "failed"},
    ],
}


def test_main_help_lists_every_subcommand() -> None:
    text = node_parser().format_help()
    for name, (summary, _) in SUBCOMMANDS.items():
        assert name in text and summary in text
    assert "--log-format" in text and "--device" in text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mesh-llm {name}")


def test_an_unknown_command_is_an_error_not_the_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dicsover", "--help"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'dicsover'" in err and "discover" in err and "status" in err


def test_discover_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["discover", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "mesh-llm discover" in out and "public" in out.lower()


def test_json_log_lines_carry_the_record_fields() -> None:
    record = logging.LogRecord("mesh_llm.access", logging.INFO, "", 0, "POST /v1 ...", (), None)
    record.fields = {"model": "SmolLM2-135M", "status": 200, "ttft_s": 0.1}
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "info" and line["logger"] == "mesh_llm.access"
    assert line["message"] == "POST /v1 ..." and line["model"] == "SmolLM2-135M" and line["status"] == 200
    assert line["time"].endswith("Z")


def test_opencode_config_lists_served_models_and_uses_the_key_variable() -> None:
    config = opencode_config(STATUS)
    provider = config["provider"]["mesh-llm"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9337/v1"
    assert sorted(provider["models"]) == ["Qwen2.5-32B", "SmolLM2-135M"]
    limit = provider["models"]["SmolLM2-135M"]["limit"]
    assert limit == {"context": 2048, "output": 512}  # a quarter: the rest is room for the prompt
    assert config["model"] == "mesh-llm/SmolLM2-135M"  # a ready model is the default
    keyed = opencode_config({**STATUS, "api": {"url": "http://127.0.0.1:9337/v1", "auth": True}})
    assert keyed["provider"]["mesh-llm"]["options"]["apiKey"] == "{env:MESH_LLM_API_KEY}"


def test_merging_keeps_the_users_other_providers_and_model() -> None:
    existing = {"model": "anthropic/claude", "provider": {"other": {"x": 1}}, "theme": "dark"}
    merged = merge_opencode(existing, opencode_config(STATUS))
    assert merged["model"] == "anthropic/claude" and merged["theme"] == "dark"
    assert set(merged["provider"]) == {"other", "mesh-llm"}


def test_goose_provider_points_at_chat_completions() -> None:
    p = goose_provider(STATUS)
    assert p["engine"] == "openai" and p["api_key_env"] == "MESH_LLM_API_KEY"
    assert p["base_url"] == "http://127.0.0.1:9337/v1/chat/completions"
    assert [m["name"] for m in p["models"]] == ["Qwen2.5-32B", "SmolLM2-135M"]


def test_gooses_anthropic_engine_gets_the_node_without_v1() -> None:
    p = goose_provider(STATUS, "anthropic")
    assert p["engine"] == "anthropic" and p["base_url"] == "http://127.0.0.1:9337"
    with pytest.raises(ValueError, match="engine"):
        goose_provider(STATUS, "ollama")


def test_an_idle_node_has_no_client_configuration() -> None:
    with pytest.raises(ValueError, match="idle"):
        opencode_config({"api": {"url": None}})


def test_runtime_file_round_trips_and_is_removed_by_its_writer(tmp_path: Path) -> None:
    rt = RuntimeFile(tmp_path)
    assert rt.read() is None
    rt.write(node_id="ab" * 32, api_port=9337, console_port=None, api_host="127.0.0.1")
    found = rt.read()
    assert found is not None and found.pid == os.getpid() and found.api_port == 9337
    assert found.console_port is None
    rt.remove()
    assert not rt.path.exists()


def test_a_runtime_file_of_a_dead_process_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "runtime.json").write_text(
        json.dumps({"pid": dead.pid, "node_id": "x", "api_port": 1, "console_port": 2, "started_at": 1e12})
    )
    assert RuntimeFile(tmp_path).read() is None
    assert RuntimeFile(tmp_path).read(check_alive=False) is not None


def test_a_runtime_file_older_than_its_pid_is_ignored(tmp_path: Path) -> None:
    # Our pid is alive, but this process started after the file's time: a reused pid.
    (tmp_path / "runtime.json").write_text(
        json.dumps({"pid": os.getpid(), "node_id": "x", "api_port": 1, "console_port": 2, "started_at": 1.0})
    )
    assert RuntimeFile(tmp_path).read() is None


def test_a_corrupt_runtime_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "runtime.json").write_text("{not json")
    assert RuntimeFile(tmp_path).read() is None


def test_a_pasted_token_with_line_breaks_and_spaces_decodes() -> None:
    token = new_mesh().invite("ab" * 32, ["127.0.0.1:4000"]).encode()
    wrapped = "\n".join(token[i : i + 30] for i in range(0, len(token), 30))
    (decoded,) = decode_tokens(
        [
            f"  {wrapped}\r\n",
        ]
    )
    assert decoded.encode() == token
    (spaced,) = decode_tokens([token[:10] + " \t" + token[10:]])
    assert spaced.encode() == token
