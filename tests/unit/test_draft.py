"""Speculative decoding's pure parts: prompt lookup, the per-slot tuner, vocabulary checks."""

from __future__ import annotations

import pytest

from mesh_llm.errors import ConfigError
from mesh_llm.serving.engine._draft import DraftStats, DraftTuner, check_vocab, lookup_draft, vocab_mismatch


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


def test_the_tuner_grows_on_success_shrinks_on_misses_and_rests_when_drafting_does_not_pay() -> None:
    tuner = DraftTuner(k_max=8, k=2)
    tuner.record(2, 2)
    assert tuner.next_k() == 4
    tuner.record(4, 1)
    assert tuner.next_k() == 2
    for _ in range(5):
        tuner.record(2, 0)
    assert tuner.k == 0
    ks = [tuner.next_k() for _ in range(tuner.probe_after)]
    assert ks[:-1] == [0] * (tuner.probe_after - 1) and ks[-1] == 1  # then it probes again


def test_stats_report_acceptance_and_tokens_per_step() -> None:
    stats = DraftStats(steps=4, drafted=20, accepted=15)
    figures = stats.as_dict("lookup")
    assert figures["acceptance"] == 0.75 and figures["tokens_per_step"] == 4.75
    assert DraftStats().as_dict("x")["acceptance"] is None


def test_vocabularies_must_mean_the_same_tokens() -> None:
    main = [b"<s>", b"</s>", b"a", b"b"]
    assert vocab_mismatch(main, [*main, b"extra"], (0, 1), (0, 1)) is None  # a few added tokens are fine
    assert "token 2" in str(vocab_mismatch(main, [b"<s>", b"</s>", b"x", b"b"], (0, 1), (0, 1)))
    assert "BOS/EOS" in str(vocab_mismatch(main, main, (0, 1), (1, 0)))
    assert "tokens" in str(vocab_mismatch(main, main * 100, (0, 1), (0, 1)))
    with pytest.raises(ConfigError, match="different vocabulary"):
        check_vocab(main, [b"x"] * 4, (0, 1), (0, 1), "other.gguf")
