"""GGUF files written by the tests themselves (no weights are downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_wide_llama_gguf(path: Path, n_layers: int = 2, n_embd: int = 1664, seed: int = 0) -> Path:
    """A random-weight llama GGUF whose every weight matrix is F32 n_embd x n_embd (11 MB, over
    the RPC hash threshold), so a worker's whole share can travel by hash, as with real models."""
    from gguf import GGUFWriter, TokenType

    head_dim = 128
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "\u2581"]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581the", "\u2581a"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (len(tokens) - len(types))
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(n_layers)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_embd)
    w.add_head_count(n_embd // head_dim)
    w.add_head_count_kv(n_embd // head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.standard_normal((len(tokens), n_embd), dtype=np.float32) * 0.05)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            w.add_tensor(
                f"blk.{i}.{name}.weight", rng.standard_normal((n_embd, n_embd), dtype=np.float32) * 0.05
            )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_dialect_gguf(path: Path, template: str, specials: list[str], eog: str, seed: int = 0) -> Path:
    """A tiny random-weight llama GGUF whose vocabulary holds `specials` as CONTROL tokens (as a
    family's real vocabulary does) and whose chat template is `template`. `eog` (one of the
    specials) is its end-of-sequence token. Every other character is spelled in byte tokens."""
    from gguf import GGUFWriter, TokenType

    n_embd, n_ff, n_head = 32, 64, 2
    tokens = ["<unk>", "<s>", *(f"<0x{b:02X}>" for b in range(256)), "\u2581", *specials]
    types = [TokenType.UNKNOWN, TokenType.CONTROL] + [TokenType.BYTE] * 256 + [TokenType.NORMAL]
    types += [TokenType.CONTROL] * len(specials)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(tokens.index(eog))
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.05

    w.add_tensor("token_embd.weight", weight(len(tokens), n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", weight(n_embd, n_embd))
    w.add_tensor("blk.0.ffn_gate.weight", weight(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", weight(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", weight(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
