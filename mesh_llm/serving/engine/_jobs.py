"""What goes into the engine and what comes out: its settings, jobs, slots, events and statistics.

A `Job` is submitted with an `emit` callback; the engine thread calls it with `Delta` events
and one `Finished` event at the end.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from mesh_llm.errors import BackendError
from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.serving.engine._draft import DraftTuner
from mesh_llm.serving.engine._llama import Sampler, SamplerSpec
from mesh_llm.serving.engine._text import TextStream
from mesh_llm.settings import node_default


@dataclass(frozen=True)
class EngineConfig:
    n_slots: int = node_default("parallel")
    n_ctx_slot: int = DEFAULT_CTX_SLOT
    prefill_chunk: int = 256
    max_queue: int = node_default("max_queue")
    n_threads: int = 1
    n_threads_batch: int = 2
    # Most draft tokens verified per slot and step (with a drafter).
    draft_max: int = node_default("draft_max")
    type_k: int | None = None  # KV cache ggml types (None: llama.cpp's f16)
    type_v: int | None = None
    flash_attn: bool = False  # see benchmarks/bench_prefill.py
    # The prefix cache beyond the slots (see _prefix_cache): bytes of RAM (0: off), bytes of disk,
    # and the folder its files go under (None: RAM only).
    cache_ram: int = 0
    cache_disk: int = 0
    cache_dir: str | None = None

    def batch_size(self, *, drafting: bool) -> int:
        """Tokens one decode step may hold: a prompt chunk plus every slot's next token and,
        when drafting, its draft tokens (a draft model's own context never drafts)."""
        return self.prefill_chunk + self.n_slots * (1 + (self.draft_max if drafting else 0))


class QueueFull(BackendError):
    """Every slot is busy and the wait queue is full."""


class FinishReason(Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]]


@dataclass(frozen=True)
class Delta:
    """New text for the client (may be empty when only logprobs or held-back text moved)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused from an earlier request
    completion_tokens: int
    error: str = ""
    stop: str | None = None  # the stop string that ended the answer, if one did


Event = Delta | Finished


@dataclass
class Job:
    """One generation request, from the queue to its Finished event."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplerSpec
    emit: Callable[[Event], None]
    stops: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token plus k alternatives
    min_tokens: int = 0  # end-of-generation tokens are banned until this many were generated
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    # engine-thread state
    slot: int = -1
    n_done: int = 0  # prompt tokens in the KV cache (reused or prefilled)
    reused: int = 0
    sampler: Sampler | None = None
    next_token: int | None = None
    generated: int = 0
    text: TextStream | None = None
    queued_at: float = field(default_factory=time.monotonic)
    disk: str = "unasked"  # its saved prefix on disk: "unasked", "reading" (it waits), "asked"

    def cancel(self) -> None:
        """Ask the engine to drop this job; it frees its slot within one decode step."""
        self.cancelled = True


@dataclass
class Slot:
    """One of the engine's sequences: the tokens whose KV it caches and the job it runs."""

    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is cached, position = index
    job: Job | None = None
    last_used: float = 0.0
    tuner: DraftTuner | None = None


@dataclass(frozen=True)
class SlotStats:
    id: int
    busy: bool
    cached_tokens: int
    # While the slot's request has no first token yet: its prompt tokens in the KV cache (reused,
    # restored or prefilled, the chunk being decoded included) and the prompt's length.
    prefill: tuple[int, int] | None = None

    @classmethod
    def of(cls, slot: Slot) -> SlotStats:
        """What status shows of ``slot`` now."""
        job = slot.job
        prefill = None
        if job is not None and job.generated == 0 and job.next_token is None:
            prefill = (job.n_done, len(job.prompt))
        return cls(slot.seq, job is not None, len(slot.cached), prefill)

    def as_dict(self) -> dict[str, Any]:
        prefill = {"done": self.prefill[0], "total": self.prefill[1]} if self.prefill else None
        return {"id": self.id, "busy": self.busy, "cached_tokens": self.cached_tokens, "prefill": prefill}


@dataclass(frozen=True)
class EngineStats:
    slots: tuple[SlotStats, ...]
    queued: int
    tokens_per_s: float  # generated tokens per second over the last few seconds
    generated_total: int
    prompt_total: int
    prefilled_total: int  # prompt tokens actually decoded (prompt_total minus reuse)
    draft: dict[str, Any] | None = None  # the drafter and its acceptance, when there is one
    prefix_cache: dict[str, Any] | None = None  # its figures, when there is one
    prefix_digests: tuple[str, ...] = ()  # see mesh_llm.serving.prefix_digest

    def as_dict(self) -> dict[str, Any]:
        busy = sum(s.busy for s in self.slots)
        return {
            "speculative": self.draft,
            "slots_total": len(self.slots),
            "slots_busy": busy,
            "slots_free": len(self.slots) - busy,
            "queued": self.queued,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "generated_total": self.generated_total,
            "prompt_total": self.prompt_total,
            "prefilled_total": self.prefilled_total,
            "slots": [s.as_dict() for s in self.slots],
            "prefix_cache": self.prefix_cache,
            "prefix_digests": list(self.prefix_digests),
        }


def token_logprob(
    logits: np.ndarray, token: int, k: int | None, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The chosen token's log-probability under ``logits``, and the ``k`` likeliest alternatives."""
    logits = logits.astype(np.float64)
    top = logits.max()
    logz = top + math.log(float(np.exp(logits - top).sum()))
    chosen = float(logits[token] - logz)
    alts: list[tuple[str, float, list[int]]] = []
    if k:
        best = np.argpartition(-logits, k)[:k]
        best = best[np.argsort(-logits[best])]
        for t in best:
            raw = piece(int(t))
            alts.append((raw.decode("utf-8", errors="replace"), float(logits[t] - logz), list(raw)))
    raw = piece(token)
    return TokenLogprob(raw.decode("utf-8", errors="replace"), chosen, list(raw), alts)
