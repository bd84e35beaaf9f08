"""`mesh-llm claude` and `mesh-llm codex`: the configurations they build, and the TOML they write."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.cli import _toml, main
from mesh_llm.cli.agents import (
    claude_env,
    claude_exports,
    claude_settings,
    codex_config,
    merge_claude,
    pick_model,
)

STATUS: dict[str, Any] = {
    "api": {"url": "http://127.0.0.1:9337/v1", "auth": False},
    "models": [
        {"name": "Qwen2.5-32B", "state": "loading", "slots": None},
        {"name": "SmolLM2-135M", "state": "ready", "ready": True, "slots": {"n_ctx_slot": 8192}},
        {"name": "Tiny", "state": "ready", "ready": True, "slots": {"n_ctx_slot": 2048}},
        {"name": "Broken", "state": "failed"},
    ],
}
KEYED = {**STATUS, "api": {"url": "http://127.0.0.1:9337/v1", "auth": True}}


def test_the_default_model_is_the_ready_one_with_the_largest_context() -> None:
    assert pick_model(STATUS) == ("SmolLM2-135M", 8192)
    assert pick_model(STATUS, "tiny") == ("Tiny", 2048)  # names compare as the API compares them


def test_an_unknown_model_is_an_error_that_lists_the_served_ones() -> None:
    with pytest.raises(
        ValueError, match=r"Nope is not served here; served: Qwen2\.5-32B, SmolLM2-135M, Tiny$"
    ):
        pick_model(STATUS, "Nope")
    with pytest.raises(ValueError, match="serves no model"):
        pick_model({"api": STATUS["api"], "models": []})


def test_claude_code_is_pointed_at_the_node_without_v1_and_both_model_names_are_mesh_models() -> None:
    env, auth = claude_env(STATUS, small_model="Tiny")
    assert not auth
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9337"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "mesh-llm"  # the node takes any token without --api-key
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL"):
        assert env[name] == "SmolLM2-135M"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == "Tiny"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "512"  # a quarter of the smaller context
    assert env["DISABLE_TELEMETRY"] == env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_a_node_key_is_read_from_the_environment_never_written() -> None:
    env, auth = claude_env(KEYED)
    assert auth and "ANTHROPIC_AUTH_TOKEN" not in env and "ANTHROPIC_API_KEY" not in env
    exports = claude_exports(env, auth)
    assert 'export ANTHROPIC_AUTH_TOKEN="$MESH_LLM_API_KEY"' in exports
    assert "export ANTHROPIC_BASE_URL=http://127.0.0.1:9337\n" in exports
    settings = claude_settings(env, auth)
    assert settings["apiKeyHelper"] == 'printf %s "$MESH_LLM_API_KEY"'


def test_claude_settings_merge_keeps_the_users_other_settings() -> None:
    existing = {
        "theme": "dark",
        "env": {"EDITOR": "vim", "ANTHROPIC_API_KEY": "old"},
        "permissions": {"allow": []},
    }
    env, auth = claude_env(STATUS)
    merged = merge_claude(existing, claude_settings(env, auth))
    assert merged["theme"] == "dark" and merged["permissions"] == {"allow": []}
    assert merged["env"]["EDITOR"] == "vim" and "ANTHROPIC_API_KEY" not in merged["env"]
    assert merged["env"]["ANTHROPIC_MODEL"] == "SmolLM2-135M"
    keyed = merge_claude(merged, claude_settings(*claude_env(KEYED)))
    assert "ANTHROPIC_AUTH_TOKEN" not in keyed["env"] and "apiKeyHelper" in keyed
    assert "apiKeyHelper" not in merge_claude(keyed, claude_settings(env, auth))  # back to a keyless node


def test_codex_speaks_responses_to_the_node_and_leaves_room_for_the_prompt() -> None:
    config = codex_config(STATUS)
    assert config["model"] == "SmolLM2-135M" and config["model_provider"] == "mesh-llm"
    provider = config["model_providers"]["mesh-llm"]
    assert provider["base_url"] == "http://127.0.0.1:9337/v1" and provider["wire_api"] == "responses"
    assert "env_key" not in provider
    assert config["model_context_window"] == 8192 and config["model_auto_compact_token_limit"] == 6144
    assert config["check_for_update_on_startup"] is False and config["analytics"] == {"enabled": False}
    assert codex_config(KEYED)["model_providers"]["mesh-llm"]["env_key"] == "MESH_LLM_API_KEY"


def test_the_written_toml_reads_back_as_the_configuration() -> None:
    config = codex_config(KEYED, "Tiny")
    text = _toml.dumps(config)
    assert tomllib.loads(text) == config
    assert "[model_providers.mesh-llm]" in text and "[model_providers]\n" not in text
    assert _toml.dumps({"a b": 'say "hi"', "t": {"x": 1.5}}) == '"a b" = "say \\"hi\\""\n\n[t]\nx = 1.5\n'


USER_CONFIG = """# my codex settings
model = "gpt-5"  # the one I use at work
approval_policy = "on-request"

[features]
goals = true
shell_tool = true

[model_providers.mesh-llm]
base_url = "http://old:1/v1"
query_params = { a = "b" }

[[skills]]
name = "x"

[mcp_servers.docs]
command = "docs-mcp"
"""


def test_merging_into_a_users_codex_config_keeps_their_lines_and_comments() -> None:
    config = codex_config(STATUS)
    text = _toml.merge(USER_CONFIG, config)
    doc = tomllib.loads(text)
    assert doc["model"] == "SmolLM2-135M" and doc["approval_policy"] == "on-request"
    assert doc["features"] == {"goals": False, "shell_tool": True, "multi_agent": False}
    assert doc["model_providers"]["mesh-llm"]["base_url"] == "http://127.0.0.1:9337/v1"
    assert doc["model_providers"]["mesh-llm"]["query_params"] == {"a": "b"}
    assert doc["skills"] == [{"name": "x"}] and doc["mcp_servers"]["docs"]["command"] == "docs-mcp"
    assert "# my codex settings" in text and "gpt-5" not in text
    assert _toml.merge(text, config) == text  # a second write changes nothing
    assert tomllib.loads(_toml.merge("", config)) == config


def test_a_config_that_line_edits_cannot_follow_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid TOML"):
        _toml.merge("model = ", codex_config(STATUS))
    with pytest.raises(ValueError, match="could not be merged line by line"):
        _toml.merge("analytics = { enabled = true }\n", codex_config(STATUS))


def test_claude_and_codex_name_the_node_they_could_not_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("claude", "codex"):
        assert main([command, "--state-dir", str(tmp_path)]) == 1
        assert "no mesh-llm node is running" in capsys.readouterr().err
