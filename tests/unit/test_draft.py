"""Speculative decoding's pure parts: prompt lookup, the per-slot tuner, vocabulary checks."""

from __future__ import annotations

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.serving.engine._draft import (
    DraftGuard,
    DraftStats,
    DraftTuner,
    StepCost,
    check_vocab,
    expected_tokens,
    lookup_draft,
    vocab_mismatch,
)


def test_lookup_continues_the_latest_earlier_match_of_the_longest_suffix() -> None:
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    # The suffix 1 2 3 occurs twice before; the latest (followed by 7 8 5) wins.
    assert lookup_draft(tokens, 3) == [7, 8, 5]
    assert lookup_draft(tokens, 1) == [7]


def test_lookup_prefers_longer_ngrams_and_needs_at_least_two_tokens() -> None:
    tokens = [4, 5, 6, 40, 7, 5, 6, 60, 9, 4, 5, 6]
    assert lookup_draft(tokens, 2) == [40, 7]  # 4 5 6 beats the later 5 6
    assert lookup_draft([1, 2, 3, 4], 4) == []  # nothing repeats
    assert lookup_draft([5, 1, 5], 2) == []  # a single repeated token is not a match
    assert lookup_draft([1, 2, 1, 2], 0) == []


def test_lookup_stops_at_the_end_of_what_is_known() -> None:
    assert lookup_draft([1, 2, 3, 1, 2], 8) == [3, 1, 2]


def _cost(fixed: float, per_token: float) -> StepCost:
    cost = StepCost()
    for n in (1, 2, 4, 8, 1, 3, 6, 9):
        cost.record(n, fixed + per_token * n)
    return cost


def test_step_cost_is_fitted_from_steps_of_different_sizes() -> None:
    fixed, per_token = _cost(0.010, 0.002).line()
    assert abs(fixed - 0.010) < 1e-6 and abs(per_token - 0.002) < 1e-6
    same = StepCost()
    for _ in range(5):
        same.record(1, 0.02)
    f, p = same.line()  # one size only: the slope is a guess, the sum still matches what was seen
    assert abs(f + p - 0.02) < 1e-9 and p > 0


def test_long_drafts_pay_when_the_step_is_mostly_fixed_cost() -> None:
    tuner = DraftTuner(k_max=8)
    for _ in range(6):
        tuner.record(4, 4)  # everything accepted
    assert tuner.choose(_cost(0.030, 0.0005), 0.0, 0) == 8  # a split model: a round trip per step
    assert tuner.choose(_cost(0.0001, 0.010), 0.0, 0) == 1  # every token costs as much as a step


def test_a_costly_drafter_or_poor_acceptance_keeps_drafts_short() -> None:
    tuner = DraftTuner(k_max=8)
    for _ in range(6):
        tuner.record(4, 4)
    assert tuner.choose(_cost(0.010, 0.001), 0.020, 0) == 1  # the draft costs more than the model
    poor = DraftTuner(k_max=8)
    for _ in range(10):
        poor.record(4, 0)
    assert poor.choose(_cost(0.030, 0.0005), 0.0, 0) == 1
    assert expected_tokens(0.5, 2) == 1.75 and expected_tokens(1.0, 3) == 4.0


def test_stats_report_acceptance_and_tokens_per_step() -> None:
    stats = DraftStats(steps=4, drafted=20, accepted=15, rejected=3)
    figures = stats.as_dict("lookup")
    assert figures["acceptance"] == 0.75 and figures["tokens_per_step"] == 4.75
    assert figures["agreement"] == round(15 / 18, 3)  # long drafts do not lower it
    assert DraftStats().as_dict("x")["acceptance"] is None


def test_vocabularies_must_mean_the_same_tokens() -> None:
    main = [b"<s>", b"</s>", b"a", b"b"]
    assert vocab_mismatch(main, [*main, b"extra"], (0, 1), (0, 1)) is None  # a few added tokens are fine
    assert "token 2" in str(vocab_mismatch(main, [b"<s>", b"</s>", b"x", b"b"], (0, 1), (0, 1)))
    assert "BOS/EOS" in str(vocab_mismatch(main, main, (0, 1), (1, 0)))
    assert "tokens" in str(vocab_mismatch(main, main * 100, (0, 1), (0, 1)))
    with pytest.raises(ConfigError, match="different vocabulary"):
        check_vocab(main, [b"x"] * 4, (0, 1), (0, 1), "other.gguf")


def test_the_guard_stops_drafting_that_makes_tokens_slower_and_keeps_probing() -> None:
    guard = DraftGuard(probe_every=4)
    assert guard.allow()  # nothing measured yet: draft
    guard.record(True, 0.100, 2)  # 50 ms a token with drafts
    guard.record(False, 0.030, 1)  # 30 ms without
    modes = [guard.allow() for _ in range(8)]
    assert modes.count(True) == 2 and modes.count(False) == 6  # only the probes draft
    guard.record(True, 0.040, 4)  # drafting got better (10 ms a token)
    guard.record(True, 0.040, 4)
    guard.record(True, 0.040, 4)
    assert guard.allow() or guard.allow()
