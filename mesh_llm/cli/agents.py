"""Coding-agent configurations for a running node (pure): what `mesh-llm claude` and `codex` print.

Claude Code speaks Anthropic Messages and is configured by environment variables (printed as
`export` lines, or merged into the `env` of ~/.claude/settings.json). Codex speaks OpenAI
Responses and reads ~/.codex/config.toml. Both are pointed at one served model, keep their
answers to a quarter of its context (the rest is room for the prompt, which for an agent is
large), and are kept off the network apart from the node: no telemetry, no update checks.

The node's API key is never written into a file: Claude Code's settings get an `apiKeyHelper`
that prints $MESH_LLM_API_KEY, Codex's provider names the variable in `env_key`.
"""

from __future__ import annotations

import shlex
from typing import Any

from mesh_llm.api.routing import model_key
from mesh_llm.cli.clients import PROVIDER_ID, anthropic_base_url, node_api, output_limit, served_models
from mesh_llm.config import API_KEY_ENV

# A cold prompt of an agent's size can take minutes to prefill on a CPU before the first byte.
CODEX_STREAM_IDLE_MS = 15 * 60 * 1000
# Tools Codex offers by default that are not function tools; a local model has no use for them.
CODEX_FEATURES_OFF = ("multi_agent", "goals")


def pick_model(status: dict[str, Any], name: str | None = None) -> tuple[str, int]:
    """(model id, context per request) an agent should use: `name`, else the ready model with
    the largest context (ties by name), else the served one with the largest context.

    Raises ValueError naming the served models when `name` is not among them, or none is served.
    """
    models = served_models(status)
    if not models:
        raise ValueError("the node serves no model yet: wait until `mesh-llm status` shows one")
    if name is not None:
        for model, ctx in models:
            if model_key(model) == model_key(name):
                return model, ctx
        raise ValueError(f"{name} is not served here; served: {', '.join(m for m, _ in models)}")
    ready = {r.get("name") for r in status.get("models", []) if r.get("ready")}
    return min(models, key=lambda m: (m[0] not in ready, -m[1], m[0]))


def claude_env(
    status: dict[str, Any], model: str | None = None, small_model: str | None = None
) -> tuple[dict[str, str], bool]:
    """Claude Code's environment for this node, and whether the node needs its API key.

    Without a key the node takes any token; with one, the key is left to the caller (a shell
    variable when printing, `apiKeyHelper` when writing settings), never put in these values.
    """
    url, auth = node_api(status)
    main, ctx = pick_model(status, model)
    small, small_ctx = pick_model(status, small_model) if small_model else (main, ctx)
    env = {"ANTHROPIC_BASE_URL": anthropic_base_url(url)}
    if not auth:
        env["ANTHROPIC_AUTH_TOKEN"] = "mesh-llm"
    env |= {
        "ANTHROPIC_MODEL": main,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": main,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": main,
        # Claude Code's small model (titles, summaries): the newer name and the older one.
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": small,
        "ANTHROPIC_SMALL_FAST_MODEL": small,
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(output_limit(min(ctx, small_ctx))),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return env, auth


def claude_exports(env: dict[str, str], auth: bool) -> str:
    """`export` lines for a shell; with a node key, the token comes from $MESH_LLM_API_KEY."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    if auth:
        lines.insert(1, f'export ANTHROPIC_AUTH_TOKEN="${API_KEY_ENV}"')
    return "\n".join(lines) + "\n"


def claude_settings(env: dict[str, str], auth: bool) -> dict[str, Any]:
    """The part of ~/.claude/settings.json that points Claude Code at the node."""
    settings: dict[str, Any] = {"env": dict(env)}
    if auth:  # run by Claude Code when it needs the key, so the key stays in the environment
        settings["apiKeyHelper"] = f'printf %s "${API_KEY_ENV}"'
    return settings


# Keys Claude Code reads that an earlier `mesh-llm claude --write` may have set differently.
_CLAUDE_AUTH_KEYS = ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY")


def merge_claude(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`existing` settings with our `env` entries (and key helper) set; everything else kept."""
    merged = dict(existing)
    env = {k: v for k, v in dict(merged.get("env") or {}).items() if k not in _CLAUDE_AUTH_KEYS}
    merged["env"] = env | ours["env"]
    if "apiKeyHelper" in ours:
        merged["apiKeyHelper"] = ours["apiKeyHelper"]
    elif merged.get("apiKeyHelper") == f'printf %s "${API_KEY_ENV}"':
        del merged["apiKeyHelper"]  # ours, from a node that had a key: the token above replaces it
    return merged


def codex_config(status: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Codex's config.toml (as a dict of top-level values and tables) for this node."""
    url, auth = node_api(status)
    name, ctx = pick_model(status, model)
    provider: dict[str, Any] = {
        "name": "mesh-llm",
        "base_url": url.rstrip("/"),
        "wire_api": "responses",
        "stream_idle_timeout_ms": CODEX_STREAM_IDLE_MS,
    }
    if auth:
        provider["env_key"] = API_KEY_ENV
    return {
        "model": name,
        "model_provider": PROVIDER_ID,
        "model_context_window": ctx,
        # Codex compacts its history here, leaving a quarter of the context for the answer.
        "model_auto_compact_token_limit": ctx - output_limit(ctx),
        "check_for_update_on_startup": False,
        "web_search": "disabled",
        "analytics": {"enabled": False},
        "features": {feature: False for feature in CODEX_FEATURES_OFF},
        "model_providers": {PROVIDER_ID: provider},
    }
