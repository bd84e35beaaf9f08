"""Anthropic's usage from a chat answer's, for whole answers and streams alike."""

from __future__ import annotations

from typing import Any


def anthropic_usage(usage: object) -> dict[str, Any]:
    """Anthropic's usage from chat's: input_tokens leaves out what was read from the cache."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens")
    prompt = prompt if isinstance(prompt, int) else 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 <= cached <= prompt else 0
    output = usage.get("completion_tokens")
    return {
        "input_tokens": prompt - cached,
        "output_tokens": output if isinstance(output, int) else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }
