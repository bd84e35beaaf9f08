"""Client configurations for a running node (pure): what `mesh-llm opencode` and `goose` print.

Both read the node's status (its API URL, models and whether it needs a key). The key itself is
never written into a file: the configurations name the MESH_LLM_API_KEY environment variable,
which both tools expand when they start. Claude Code's and Codex's configurations are in `agents`.
"""

from __future__ import annotations

from typing import Any

from mesh_llm.config import API_KEY_ENV
from mesh_llm.models.kv import DEFAULT_CTX_SLOT

PROVIDER_ID = "mesh-llm"
GOOSE_PROVIDER_ID = "mesh_llm"  # goose wants lowercase letters, digits and underscores
OUTPUT_SHARE = 4  # an answer may take at most 1/OUTPUT_SHARE of the context: the rest holds the prompt


def output_limit(context: int) -> int:
    """The most tokens a client should ask for in one answer, given the model's context."""
    return max(1, context // OUTPUT_SHARE)


def served_models(status: dict[str, Any]) -> list[tuple[str, int]]:
    """(model id, context window per request) for every model the node's API can route, sorted."""
    found: dict[str, int] = {}
    for row in status.get("models", []):
        name = row.get("name")
        if not isinstance(name, str) or row.get("state") == "failed":
            continue
        slots = row.get("slots") if isinstance(row.get("slots"), dict) else {}
        n_ctx = slots.get("n_ctx_slot") if slots else None
        context = n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else DEFAULT_CTX_SLOT
        found[name] = max(found.get(name, 0), context)
    return sorted(found.items())


def node_api(status: dict[str, Any]) -> tuple[str, bool]:
    """(the node's /v1 URL, whether it needs an API key); ValueError for an idle node."""
    api = status.get("api") or {}
    url = api.get("url")
    if not url:
        raise ValueError("this node serves no API (it is idle): start it with --model or --join")
    return str(url), bool(api.get("auth"))


def opencode_config(status: dict[str, Any]) -> dict[str, Any]:
    """An opencode.json that adds this node as the provider `mesh-llm`."""
    url, auth = node_api(status)
    models = served_models(status)
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "mesh-llm",
                "options": {
                    "baseURL": url,
                    # opencode's SDK sends some key; without --api-key the node takes any.
                    "apiKey": f"{{env:{API_KEY_ENV}}}" if auth else "mesh-llm",
                },
                "models": {
                    # Equal limits make opencode compact after every turn: leave room for the prompt.
                    name: {"name": name, "limit": {"context": ctx, "output": output_limit(ctx)}}
                    for name, ctx in models
                },
            }
        },
    }
    ready = sorted(
        r["name"] for r in status.get("models", []) if r.get("ready") and isinstance(r.get("name"), str)
    )
    default = ready[0] if ready else (models[0][0] if models else None)
    if default is not None:
        config["model"] = f"{PROVIDER_ID}/{default}"
    return config


def merge_opencode(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`existing` opencode config with our provider added or replaced; its own model choice kept."""
    merged = dict(existing)
    merged.setdefault("$schema", ours["$schema"])
    providers = dict(merged.get("provider") or {})
    providers[PROVIDER_ID] = ours["provider"][PROVIDER_ID]
    merged["provider"] = providers
    if "model" not in merged and "model" in ours:
        merged["model"] = ours["model"]
    return merged


def anthropic_base_url(api_url: str) -> str:
    """Anthropic clients add /v1/messages themselves: the node's API URL without its /v1."""
    url = api_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


GOOSE_ENGINES = ("openai", "anthropic")


def goose_provider(status: dict[str, Any], engine: str = "openai") -> dict[str, Any]:
    """A goose custom provider (`~/.config/goose/custom_providers/mesh_llm.json`).

    goose's `openai` engine posts to `base_url` as given (Chat Completions); its `anthropic`
    engine adds /v1/messages to the host it is given.
    """
    url, auth = node_api(status)
    if engine not in GOOSE_ENGINES:
        raise ValueError(f"goose engine must be one of {', '.join(GOOSE_ENGINES)}, not {engine!r}")
    base = f"{url.rstrip('/')}/chat/completions" if engine == "openai" else anthropic_base_url(url)
    return {
        "name": GOOSE_PROVIDER_ID,
        "engine": engine,
        "display_name": "mesh-llm",
        "description": f"mesh-llm node {status.get('short_id', '')} ({url})".strip(),
        "api_key_env": API_KEY_ENV,
        "base_url": base,
        "models": [{"name": name, "context_limit": ctx} for name, ctx in served_models(status)],
        "requires_auth": auth,
        "supports_streaming": True,
    }
