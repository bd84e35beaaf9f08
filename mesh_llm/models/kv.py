"""How much memory a model's KV cache takes (pure): from GGUF metadata, per token and in all.

The engine gives every slot its own context, so a model served with `--parallel 4` and
`--ctx-size 4096` holds 16,384 tokens of keys and values (f16, 2 bytes each) next to its
weights. Fit decisions and the split planner count that too. Models whose metadata lacks
the attention shape (rare) count no KV cache, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Tokens of context per slot that fit decisions and splits count when --ctx-size is not given,
# and what a node given several models serves each with. A node's one solo model gets the
# rule of planning/offload.auto_ctx instead: its training context, capped, within memory.
DEFAULT_CTX_SLOT = 4096

KV_BYTES_PER_VALUE = 2  # f16 keys and values, llama.cpp's default cache type


def _per_layer(value: Any, n_layers: int) -> list[int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value] * n_layers
    if isinstance(value, list) and len(value) == n_layers and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def kv_bytes_per_token(meta: Mapping[str, Any]) -> int:
    """Bytes of K and V cache one token takes across all layers; 0 if the metadata is silent."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return 0
    n_layers = meta.get(f"{arch}.block_count")
    n_embd = meta.get(f"{arch}.embedding_length")
    if not isinstance(n_layers, int) or n_layers <= 0 or not isinstance(n_embd, int):
        return 0
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layers)
    kv_heads = _per_layer(meta.get(f"{arch}.attention.head_count_kv"), n_layers) or heads
    if heads is None or kv_heads is None or max(heads) <= 0:
        return 0
    default_dim = n_embd // max(heads)
    key_dim = meta.get(f"{arch}.attention.key_length", default_dim)
    value_dim = meta.get(f"{arch}.attention.value_length", default_dim)
    if not isinstance(key_dim, int) or not isinstance(value_dim, int):
        return 0
    return sum(h * (key_dim + value_dim) for h in kv_heads) * KV_BYTES_PER_VALUE


def training_context(meta: Mapping[str, Any]) -> int:
    """The context the model was trained for (GGUF ``<arch>.context_length``); 0 if unknown."""
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length") if isinstance(arch, str) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def context_warning(model: str, n_ctx_slot: int, n_ctx_train: int) -> str | None:
    """What to tell the user when a slot's context is longer than the model was trained for."""
    if n_ctx_train <= 0 or n_ctx_slot <= n_ctx_train:
        return None
    return (
        f"{model}: {n_ctx_slot} tokens of context per slot exceed its training context ({n_ctx_train}); "
        f"past {n_ctx_train} tokens its answers may lose coherence (--ctx-size {n_ctx_train} keeps within it)"
    )


def kv_cache_bytes(meta: Mapping[str, Any], n_ctx_slot: int, n_slots: int) -> int:
    """The whole KV cache of a model server with `n_slots` slots of `n_ctx_slot` tokens."""
    return kv_bytes_per_token(meta) * n_ctx_slot * n_slots
