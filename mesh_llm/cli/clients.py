"""Client configurations for a running node (pure): what `mesh-llm opencode` and `goose` print.

Both read the node's status (its API URL, models and whether it needs a key). The key itself is
never written into a file: the configurations name the MESH_LLM_API_KEY environment variable,
which both tools expand when they start.
"""

from __future__ import annotations

from typing import Any

from mesh_llm.config import API_KEY_ENV
from mesh_llm.models.kv import DEFAULT_CTX_SLOT

PROVIDER_ID = "mesh-llm"
GOOSE_PROVIDER_ID = "mesh_llm"  # goose wants lowercase letters, digits and underscores


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


def _api(status: dict[str, Any]) -> tuple[str, bool]:
    api = status.get("api") or {}
    url = api.get("url")
    if not url:
        raise ValueError("this node serves no API (it is idle): start it with --model or --join")
    return str(url), bool(api.get("auth"))


def opencode_config(status: dict[str, Any]) -> dict[str, Any]:
    """An opencode.json that adds this node as the provider `mesh-llm`."""
    url, auth = _api(status)
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
                    name: {"name": name, "limit": {"context": ctx, "output": ctx}} for name, ctx in models
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


def goose_provider(status: dict[str, Any]) -> dict[str, Any]:
    """A goose custom provider (`~/.config/goose/custom_providers/mesh_llm.json`)."""
    url, auth = _api(status)
    return {
        "name": GOOSE_PROVIDER_ID,
        "engine": "openai",
        "display_name": "mesh-llm",
        "description": f"mesh-llm node {status.get('short_id', '')} ({url})".strip(),
        "api_key_env": API_KEY_ENV,
        "base_url": f"{url.rstrip('/')}/chat/completions",
        "models": [{"name": name, "context_limit": ctx} for name, ctx in served_models(status)],
        "requires_auth": auth,
        "supports_streaming": True,
    }
