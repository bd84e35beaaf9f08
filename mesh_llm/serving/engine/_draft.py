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

`DraftTuner` picks K per slot and step from the slot's acceptance and what a step costs on this
machine (`StepCost`); `DraftGuard` drafts only while steps with drafts yield tokens faster than
steps without, by the clock, and probes the other way every few steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    # Its own time per draft token when it can tell (a draft model's decode steps), else None:
    # the engine then times whole proposals.
    seconds_per_token: float | None

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
    seconds_per_token: float | None = None

    def propose(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        return [lookup_draft(r.context, r.k) for r in requests]

    def forget(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


class StepCost:
    """What one decode step costs, as a line: fixed + per_token * tokens in the batch (seconds).

    Fitted by least squares over recent decode steps (older ones fade), so it follows this
    machine: on a CPU each extra token costs nearly as much as the first; on a GPU, or on a
    split model whose every step pays a network round trip, the fixed part dominates and long
    drafts pay. Until steps of different sizes have been seen, the per-token part is guessed.
    """

    DECAY = 0.97
    MAX_TOKENS = 64  # larger batches are prompt chunks, whose cost is not the decode line's
    GUESS = 0.15  # per-token cost as a share of the fixed cost, before there is data

    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def record(self, tokens: int, seconds: float) -> None:
        if tokens > self.MAX_TOKENS or not seconds > 0:
            return
        d = self.DECAY
        self._w = self._w * d + 1
        self._x = self._x * d + tokens
        self._y = self._y * d + seconds
        self._xx = self._xx * d + tokens * tokens
        self._xy = self._xy * d + tokens * seconds

    def line(self) -> tuple[float, float]:
        """(fixed, per_token) in seconds; arbitrary but consistent units before any data."""
        if self._w < 1:
            return 1.0, self.GUESS
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var < 0.25:  # all steps the same size: the slope is unknown
            fixed = my / (1 + self.GUESS * mx)
            return fixed, fixed * self.GUESS
        slope = max((self._xy / self._w - mx * my) / var, 0.0)
        return max(my - slope * mx, 1e-6), slope


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step yields for a slot that drafts `k`, each accepted with probability `alpha`
    while the ones before it were: the main model's own token plus the accepted drafts."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


@dataclass
class DraftTuner:
    """How many tokens one slot drafts in a step that drafts: the K that maximises tokens/s.

    It keeps the slot's per-token acceptance (recent verifications weigh most) and weighs the
    tokens K drafts are expected to yield against what K more tokens cost the step (see
    StepCost) and the drafter's own time per draft token. Whether a step drafts at all is the
    DraftGuard's call, made with the clock; a step that drafts drafts at least one token.
    """

    k_max: int = 8
    k: int = 1  # the last choice
    _hits: float = 1.2  # an optimistic start: 60 % of 2 pseudo-trials
    _trials: float = 2.0

    @property
    def alpha(self) -> float:
        return self._hits / self._trials if self._trials > 0 else 0.0

    def choose(self, cost: StepCost, draft_s_per_token: float, others: int) -> int:
        """K (1 to k_max) for this step; `others` is how many other slots generate in the batch."""
        fixed, per_token = cost.line()
        base = others + 1
        alpha = self.alpha
        best_k, best = 1, 0.0
        for k in range(1, self.k_max + 1):
            rate = (others + expected_tokens(alpha, k)) / (
                fixed + per_token * (base + k) + draft_s_per_token * k
            )
            if rate > best * 1.02:  # a margin: a longer draft for a hair's gain is noise
                best_k, best = k, rate
        self.k = best_k
        return best_k

    def record(self, drafted: int, accepted: int) -> None:
        """The main model accepted the first `accepted` of `drafted` tokens."""
        if drafted <= 0:
            return
        trials = accepted + (1 if accepted < drafted else 0)
        self._hits = self._hits * 0.9 + accepted
        self._trials = self._trials * 0.9 + trials


class DraftGuard:
    """A check on the tuner's model with the clock: does drafting really make tokens come faster?

    It keeps the seconds per generated token of recent steps with drafts and of steps without
    (decode-only steps; a prompt chunk would skew either), and allows drafting only while the
    drafting steps are not the slower ones. Every `probe_every` steps it runs one step the
    other way, so both figures stay current when the text or the machine's load changes.
    """

    def __init__(self, probe_every: int = 12) -> None:
        self.probe_every = probe_every
        self.per_token: dict[bool, float | None] = {True: None, False: None}
        self._steps = 0

    def allow(self) -> bool:
        self._steps += 1
        drafting, plain = self.per_token[True], self.per_token[False]
        better = drafting is None or plain is None or drafting <= plain
        if self._steps % self.probe_every == 0:
            return not better  # a probe of the mode not in use
        return better

    def record(self, drafted: bool, seconds: float, tokens: int) -> None:
        if tokens <= 0 or not seconds > 0:
            return
        sample = seconds / tokens
        old = self.per_token[drafted]
        self.per_token[drafted] = sample if old is None else 0.75 * old + 0.25 * sample


@dataclass
class DraftStats:
    """Totals over a model server's life, for status."""

    steps: int = 0  # verification steps that had at least one draft token
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0  # steps that ended at a draft token the model disagreed with

    def record(self, drafted: int, accepted: int) -> None:
        """One verification step: `accepted` of its `drafted` tokens were kept."""
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.rejected += accepted < drafted

    def as_dict(self, name: str) -> dict[str, object]:
        return {
            "draft": name,
            "acceptance": round(self.accepted / self.drafted, 3) if self.drafted else None,
            # how often the model agrees with a draft token it gets to judge: unlike acceptance,
            # it does not depend on how long the drafts were
            "agreement": round(self.accepted / (self.accepted + self.rejected), 3)
            if self.accepted + self.rejected
            else None,
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
