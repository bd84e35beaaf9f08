"""Speculative decoding: where draft tokens come from, and how many to ask for.

A drafter proposes up to K tokens that may follow a slot's context; the engine verifies them
all in one batched pass of the main model (one network round trip on a split model, however
many tokens are accepted) and keeps the longest prefix the main model agrees with.

Drafts are greedy (a point mass q on one token). For such a draft the standard acceptance rule
(accept with probability min(1, p/q), else resample from the normalised max(0, p - q)) reduces
to: sample the main model's token as usual and accept the draft where they match. The engine
does exactly that, with the request's own sampler chain (temperature, penalties, grammar) at
each position, so every output token follows the main model's distribution, and greedy output
is the same token for token as without a draft.

Two sources:
- `LookupDrafter` (pure): the continuation of the longest recent n-gram match in the prompt
  and the output so far; costs nothing, pays off where text repeats (code edits, quoting).
- `ModelDrafter`: a small model of the same vocabulary next to the main one, with its own KV
  sequence per slot, drafting for every slot in one batch per draft token.

`DraftTuner` adapts K per slot to its acceptance, down to 0 (no drafting) while it does not pay,
probing again now and then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mesh_llm.errors import ConfigError

LOOKUP = "lookup"


@dataclass(frozen=True)
class DraftRequest:
    """Draft for slot `seq`: up to `k` tokens to follow `context` (its cached tokens and the next one)."""

    seq: int
    context: Sequence[int]
    k: int


class Drafter(Protocol):
    name: str

    def propose(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        """Draft tokens for each request, in order (possibly fewer than asked, or none)."""
        ...

    def forget(self, seq: int) -> None:
        """The slot's cache was cleared; drop whatever is kept for it."""
        ...

    def close(self) -> None: ...


def lookup_draft(
    tokens: Sequence[int], k: int, *, max_ngram: int = 4, min_ngram: int = 2, window: int = 4096
) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the longest suffix
    n-gram of `tokens` (n from `max_ngram` down to `min_ngram`), within the last `window` tokens."""
    if k <= 0 or len(tokens) < min_ngram + 1:
        return []
    arr = np.asarray(tokens[-window:], dtype=np.int64)
    n = len(arr)
    for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
        suffix = arr[n - size :]
        # Earlier starts only, each with at least one token after the n-gram; latest first.
        for i in np.flatnonzero(arr[: n - size] == suffix[0])[::-1]:
            if np.array_equal(arr[i : i + size], suffix):
                return [int(t) for t in arr[i + size : i + size + k]]
    return []


class LookupDrafter:
    """Prompt lookup: drafts from the slot's own tokens, with no model at all."""

    name = LOOKUP

    def propose(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        return [lookup_draft(r.context, r.k) for r in requests]

    def forget(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class DraftTuner:
    """How many tokens to draft for one slot next, from how many were accepted so far."""

    k_max: int = 8
    k: int = 4
    min_rate: float = 0.3  # below this acceptance, drafting costs more verify work than it saves
    probe_after: int = 16  # steps without drafting before trying again with one token
    rate: float = 1.0
    _idle: int = field(default=0, repr=False)

    def next_k(self) -> int:
        if self.k == 0:
            self._idle += 1
            if self._idle >= self.probe_after:
                self._idle, self.k, self.rate = 0, 1, self.min_rate * 1.5
        return self.k

    def record(self, drafted: int, accepted: int) -> None:
        """The main model accepted `accepted` of `drafted` tokens."""
        if drafted <= 0:
            return
        self.rate = 0.7 * self.rate + 0.3 * (accepted / drafted)
        if self.rate < self.min_rate:
            self.k = 0
        elif accepted == drafted:
            self.k = min(self.k_max, self.k * 2)
        else:
            self.k = max(1, accepted + 1)


@dataclass
class DraftStats:
    """Totals over a model server's life, for status."""

    steps: int = 0  # verification steps that had at least one draft token
    drafted: int = 0
    accepted: int = 0

    def as_dict(self, name: str) -> dict[str, object]:
        return {
            "draft": name,
            "acceptance": round(self.accepted / self.drafted, 3) if self.drafted else None,
            # tokens a verification step produced: the accepted drafts plus the main model's own
            "tokens_per_step": round((self.accepted + self.steps) / self.steps, 2) if self.steps else None,
            "drafted_total": self.drafted,
            "accepted_total": self.accepted,
        }


def vocab_mismatch(
    main: Sequence[bytes],
    draft: Sequence[bytes],
    main_special: tuple[int, int],
    draft_special: tuple[int, int],
) -> str | None:
    """Why a draft's vocabulary cannot draft for the main model's, or None if it can.

    Token ids must mean the same text; vocabularies may differ by a few added tokens at the end
    (as llama.cpp's own speculative example allows, up to 128).
    """
    if abs(len(main) - len(draft)) > 128:
        return f"the draft has {len(draft)} tokens, the model {len(main)}"
    if main_special != draft_special:
        return f"their BOS/EOS tokens differ ({draft_special} vs {main_special})"
    for token in range(min(len(main), len(draft))):
        if main[token] != draft[token]:
            return f"token {token} is {draft[token]!r} in the draft but {main[token]!r} in the model"
    return None


def check_vocab(
    main: Sequence[bytes],
    draft: Sequence[bytes],
    main_special: tuple[int, int],
    draft_special: tuple[int, int],
    draft_name: str,
) -> None:
    """Raise ConfigError with a clear message when `draft_name` cannot draft for the model."""
    why = vocab_mismatch(main, draft, main_special, draft_special)
    if why is not None:
        raise ConfigError(
            f"draft {draft_name} has a different vocabulary from the model ({why}); "
            "use a draft of the same family, --draft lookup, or --no-draft"
        )


def softmax_max(logits: np.ndarray) -> tuple[int, float]:
    """The most likely token and its probability."""
    token = int(np.argmax(logits))
    top = float(logits[token])
    total = float(np.exp(logits - top).sum())
    return token, 1.0 / total if total > 0 and math.isfinite(total) else 0.0
