"""How much memory a model's KV cache takes (pure): from GGUF metadata, per token and in all.

The engine gives every slot its own context, so a model served with `--parallel 4` and
`--ctx-size 4096` holds 16,384 tokens of keys and values (f16, 2 bytes each) next to its
weights. Fit decisions and the split planner count that too. Models whose metadata lacks
the attention shape (rare) count no KV cache, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_CTX_SLOT = 4096  # tokens of context per request slot unless --ctx-size (or a GPU) says otherwise

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


def kv_cache_bytes(meta: Mapping[str, Any], n_ctx_slot: int, n_slots: int) -> int:
    """The whole KV cache of a model server with `n_slots` slots of `n_ctx_slot` tokens."""
    return kv_bytes_per_token(meta) * n_ctx_slot * n_slots
