"""Thin handles over llama-cpp-python's ctypes bindings: model, context, batch, samplers.

Everything here calls into llama.cpp; nothing here decides anything. The engine owns one
`Model`, one `Context` with a KV sequence per slot, and one `Batch` it refills every step.
ctypes releases the GIL during each foreign call, so the HTTP event loop keeps running while
a step decodes, and tokenizing in a worker thread never waits for the decode loop.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llama_cpp import llama_cpp as C

from mesh_llm.errors import BackendError
from mesh_llm.serving.engine._sampling import Sampling

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            C.llama_backend_init()
            _backend_ready = True


class Model:
    """A loaded GGUF: vocabulary, metadata and the weights llama.cpp placed on its devices."""

    def __init__(
        self,
        path: Path,
        *,
        n_gpu_layers: int = 0,
        tensor_split: list[float] | None = None,
        devices: Sequence[str] = (),
    ) -> None:
        """``devices``: ggml device names to offload to, in order (default: llama.cpp's choice,
        or the RPC devices a split host's hook pins)."""
        _init_backend()
        # Read through the module attribute: a split host hooks it to pin the RPC devices.
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        if devices:
            from mesh_llm.serving.devices import device_array

            params.devices = ctypes.cast(device_array(devices), ctypes.c_void_p)
        self._tensor_split: Any = None
        if tensor_split:
            self._tensor_split = (ctypes.c_float * C.LLAMA_MAX_DEVICES)(*tensor_split)
            params.tensor_split = self._tensor_split
        ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise BackendError(f"llama.cpp could not load {path}")
        self.ptr = ptr
        self.path = Path(path)
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab: int = C.llama_vocab_n_tokens(self.vocab)
        self.n_layer: int = C.llama_model_n_layer(ptr)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(ptr)
        self.add_bos: bool = bool(C.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._piece_lock = threading.Lock()
        self._shown: frozenset[int] = frozenset()

    @property
    def n_head(self) -> int:
        return int(C.llama_model_n_head(self.ptr))

    @property
    def n_head_kv(self) -> int:
        return int(C.llama_model_n_head_kv(self.ptr))

    def _head_dim(self, which: str) -> int:
        arch = self.meta("general.architecture") or ""
        given = self.meta(f"{arch}.attention.{which}_length")
        if given and given.isdigit():
            return int(given)
        return int(C.llama_model_n_embd(self.ptr)) // max(1, int(C.llama_model_n_head(self.ptr)))

    @property
    def head_dim_k(self) -> int:
        """Width of one KV head's key (GGUF ``attention.key_length``, else embd / heads)."""
        return self._head_dim("key")

    @property
    def head_dim_v(self) -> int:
        return self._head_dim("value")

    @functools.cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token (a scan of the vocabulary, done when min_tokens needs it)."""
        return tuple(t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Text to token ids; safe to call from any thread while the engine decodes."""
        raw = text.encode("utf-8", errors="replace")
        cap = max(16, len(raw) + 8)  # a token covers at least one byte, plus BOS/EOS
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            buf = (C.llama_token * -n)()
            n = C.llama_tokenize(self.vocab, raw, len(raw), buf, -n, add_special, parse_special)
            if n < 0:
                raise BackendError("llama.cpp failed to tokenize the prompt")
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (cached: the engine asks for every generated token)."""
        key = (token, special)
        found = self._pieces.get(key)
        if found is not None:
            return found
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        out = buf.raw[: max(n, 0)]
        with self._piece_lock:
            self._pieces[key] = out
        return out

    def show_markers(self, markers: Sequence[str]) -> frozenset[int]:
        """Make `text_piece` write the text of the control tokens that are exactly one of
        `markers` (a dialect's call and reasoning markers, which a parser must see); other control
        tokens (BOS, end of turn) stay hidden. Returns the tokens shown."""
        shown = set()
        for marker in markers:
            tokens = self.tokenize(marker, add_special=False, parse_special=True)
            if (
                len(tokens) == 1
                and not self.is_eog(tokens[0])
                and self.piece(tokens[0], special=True) == marker.encode()
            ):
                shown.add(tokens[0])
        self._shown = frozenset(shown)
        return self._shown

    def text_piece(self, token: int) -> bytes:
        """The bytes a generated token adds to the answer's text: control tokens are hidden, except
        the markers `show_markers` named."""
        return self.piece(token, special=token in self._shown)

    def vocab_pieces(self) -> list[bytes]:
        """Every token's bytes, special ones included (to compare two models' vocabularies)."""
        return [self.piece(t, special=True) for t in range(self.n_vocab)]

    def special_ids(self) -> tuple[int, int]:
        """The BOS and EOS token ids (-1 where there is none)."""
        return int(C.llama_vocab_bos(self.vocab)), int(C.llama_vocab_eos(self.vocab))

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def special_text(self, which: str) -> str:
        """The text of the BOS or EOS token (templates refer to them), or ''."""
        token = C.llama_vocab_bos(self.vocab) if which == "bos" else C.llama_vocab_eos(self.vocab)
        return self.token_text(token) if token >= 0 else ""

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """One llama.cpp context holding ``n_seq`` independent KV sequences of ``n_ctx_seq`` each."""

    def __init__(
        self,
        model: Model,
        *,
        n_seq: int,
        n_ctx_seq: int,
        n_batch: int,
        n_threads: int,
        n_threads_batch: int,
        type_k: int | None = None,
        type_v: int | None = None,
        flash_attn: bool = False,
    ) -> None:
        """``type_k``/``type_v``: ggml types of the KV cache (None: llama.cpp's f16)."""
        params = C.llama_context_default_params()
        if type_k is not None:
            params.type_k = type_k
        if type_v is not None:
            params.type_v = type_v
        params.n_ctx = n_ctx_seq * n_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False  # each slot gets its own n_ctx_seq, not a shared pool
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.no_perf = True
        # As llama-cpp-python's Llama does by default: the same kernels give the same greedy output.
        params.flash_attn_type = (
            C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ptr = C.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise BackendError(f"llama.cpp could not create a context of {n_seq} x {n_ctx_seq} tokens")
        self.ptr = ptr
        self.n_vocab = model.n_vocab
        self.n_ctx_seq: int = C.llama_n_ctx_seq(ptr)
        self._memory = C.llama_get_memory(ptr)

    def decode(self, batch: Batch) -> int:
        return int(C.llama_decode(self.ptr, batch.raw))

    def drop_from(self, seq: int, pos: int) -> bool:
        """Forget a sequence's cache from ``pos`` on; False if this model cannot trim partially."""
        return bool(C.llama_memory_seq_rm(self._memory, seq, pos, -1))

    def clear_seq(self, seq: int) -> None:
        C.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def save_seq(self, seq: int) -> bytearray:
        """The sequence's KV state, as llama.cpp's per-sequence state API writes it."""
        size = int(C.llama_state_seq_get_size(self.ptr, seq))
        data = bytearray(size)
        n = C.llama_state_seq_get_data(self.ptr, (ctypes.c_uint8 * size).from_buffer(data), size, seq)
        return data[:n] if n != size else data

    def load_seq(self, seq: int, data: bytearray) -> bool:
        """Replace the sequence's KV with a saved state; False if llama.cpp refused it."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer(data)
        return bool(C.llama_state_seq_set_data(self.ptr, buf, len(data), seq))

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits for the ``index``-th token of the last batch."""
        ptr = C.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        if self.ptr:
            C.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch of single-sequence tokens."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = C.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; returns its index in the batch (where its logits will be)."""
        i = self.n
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq
        raw.logits[i] = 1 if logits else 0
        self.n = i + 1
        raw.n_tokens = self.n
        return i

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def close(self) -> None:
        C.llama_batch_free(self.raw)


# A ban is a huge but finite penalty, not -inf: if a grammar allows only banned tokens (a
# complete JSON value allows only end-of-generation, say), one of them must still be chosen.
# With every candidate at -inf the grammar would be handed a token it forbids, and llama.cpp
# aborts the whole process on that.
BANNED = -1e30


def grammar_is_valid(model: Model, grammar: str) -> bool:
    """Whether llama.cpp accepts a GBNF grammar (built and freed at once; safe in any thread)."""
    ptr = C.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    if not ptr:
        return False
    C.llama_sampler_free(ptr)
    return True


@dataclass(frozen=True)
class SamplerSpec(Sampling):
    """What one request asks of the sampler, validated upstream (see _openai): the fields of
    `Sampling`, and these."""

    penalty_last_n: int = 64
    grammar: str | None = None  # GBNF, root rule "root"
    ban_eog: bool = False  # start with end-of-generation tokens banned (min_tokens); see Sampler.allow_eog


class Sampler:
    """A llama_sampler chain built from a SamplerSpec; sampling accepts the token into it."""

    def __init__(self, model: Model, spec: SamplerSpec, seed: int) -> None:
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.ptr = chain
        self._refs: list[Any] = []
        add = C.llama_sampler_chain_add
        self._eog_banned = False
        if spec.ban_eog and model.eog_tokens:
            # First in the chain, so allow_eog can take it out by index 0 once min_tokens is reached.
            add(chain, self._bias(model, [(t, BANNED) for t in model.eog_tokens]))
            self._eog_banned = True
        if spec.logit_bias:
            add(chain, self._bias(model, spec.logit_bias))
        if spec.repeat_penalty != 1.0 or spec.presence_penalty or spec.frequency_penalty:
            add(
                chain,
                C.llama_sampler_init_penalties(
                    model.n_vocab,
                    spec.penalty_last_n,
                    spec.repeat_penalty,
                    spec.frequency_penalty,
                    spec.presence_penalty,
                ),
            )
        if spec.grammar is not None:
            grammar = C.llama_sampler_init_grammar(model.vocab, spec.grammar.encode(), b"root")
            if not grammar:
                C.llama_sampler_free(chain)
                raise BackendError("llama.cpp rejected the grammar built for this request")
            add(chain, grammar)
        if spec.temperature <= 0:
            add(chain, C.llama_sampler_init_greedy())
        else:
            if spec.top_k > 0:
                add(chain, C.llama_sampler_init_top_k(spec.top_k))
            if spec.top_p < 1.0:
                add(chain, C.llama_sampler_init_top_p(spec.top_p, 1))
            if spec.min_p > 0:
                add(chain, C.llama_sampler_init_min_p(spec.min_p, 1))
            add(chain, C.llama_sampler_init_temp(spec.temperature))
            add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _bias(self, model: Model, biases: Sequence[tuple[int, float]]) -> Any:
        arr = (C.llama_logit_bias * len(biases))()
        for i, (token, bias) in enumerate(biases):
            arr[i].token = C.llama_token(token)
            arr[i].bias = bias
        self._refs.append(arr)  # llama.cpp copies it, but keep it alive until the chain is built
        return C.llama_sampler_init_logit_bias(model.n_vocab, len(biases), arr)

    def allow_eog(self) -> None:
        """Lift the end-of-generation ban once the request's min_tokens have been generated."""
        if self._eog_banned:
            C.llama_sampler_free(C.llama_sampler_chain_remove(self.ptr, 0))
            self._eog_banned = False

    def sample(self, ctx: Context, index: int) -> int:
        return int(C.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def close(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None
