"""The KV prefix cache on the real engine and the demo model: a conversation evicted from its
slot comes back from the cache with the same greedy answer as a cold run, from RAM and, after a
restart, from disk; a corrupt file is skipped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_llm.serving.engine import Engine, EngineConfig, Model
from mesh_llm.serving.engine._jobs import Delta, Event, Finished, Job
from mesh_llm.serving.engine._llama import SamplerSpec
from tests.harness import smollm2_path

CONVERSATIONS = 5  # on 2 slots: each round evicts every conversation from its slot


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    m = Model(smollm2_path())
    yield m
    m.close()


def _prompt(model: Model, i: int) -> list[int]:
    facts = " ".join(f"Project {i} rule {k}: value {k * (i + 3)}." for k in range(14))
    return model.tokenize(
        f"System for project {i}. {facts} Question: the first rule", add_special=True, parse_special=False
    )


def _ask(engine: Engine, prompt: list[int], max_tokens: int = 12) -> tuple[str, Finished]:
    done = threading.Event()
    text: list[str] = []
    end: list[Finished] = []

    def emit(event: Event) -> None:
        if isinstance(event, Delta):
            text.append(event.text)
        else:
            end.append(event)
            done.set()

    engine.submit(Job(prompt=prompt, max_tokens=max_tokens, sampling=SamplerSpec(temperature=0), emit=emit))
    assert done.wait(120), "no answer within 2 minutes"
    return "".join(text), end[0]


def _engine(model: Model, folder: Path | None, ram: int = 1 << 30) -> Engine:
    config = EngineConfig(
        n_slots=2, n_ctx_slot=1024, n_threads=2, n_threads_batch=2,
        cache_ram=ram, cache_disk=1 << 30 if folder else 0, cache_dir=str(folder) if folder else None,
    )  # fmt: skip
    engine = Engine(model, config)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def cold(model: Model) -> dict[int, str]:
    """Each conversation's greedy answer with no prefix cache. A restore leaves only the prompt's
    last token to decode, alone in its batch; a batch of one token takes other kernels than a
    chunk of many, whose rounding can turn a close greedy choice on this small model. So the cold
    run decodes the last token alone too: it prefills all but that token first, without a cache."""
    engine = _engine(model, None, ram=0)
    try:
        answers = {}
        for i in range(CONVERSATIONS):
            prompt = _prompt(model, i)
            _ask(engine, prompt[:-1], max_tokens=1)
            answers[i] = _ask(engine, prompt)[0]
        return answers
    finally:
        engine.stop()


def test_an_evicted_conversation_is_restored_with_the_cold_answer(
    model: Model, cold: dict[int, str], tmp_path: Path
) -> None:
    engine = _engine(model, None)
    try:
        for i in range(CONVERSATIONS):
            _ask(engine, _prompt(model, i))
        for i in range(CONVERSATIONS):
            prompt = _prompt(model, i)
            text, end = _ask(engine, prompt)
            assert text == cold[i]
            assert end.cached_tokens == len(prompt) - 1  # all but the token decoded for its logits
        figures = engine.stats().prefix_cache
        assert figures is not None and figures["hits"] >= CONVERSATIONS - 2
        assert 0 < figures["ram_bytes"] <= figures["ram_budget_bytes"]
        assert engine.stats().as_dict()["prefix_digests"] == []  # prompts shorter than 256 tokens
    finally:
        engine.stop()


def test_a_restarted_engine_restores_from_disk_and_skips_a_corrupt_file(
    model: Model, cold: dict[int, str], tmp_path: Path
) -> None:
    engine = _engine(model, tmp_path)
    try:
        for i in range(CONVERSATIONS):
            _ask(engine, _prompt(model, i))
    finally:
        engine.stop()  # finishes the queued writes
    files = sorted(tmp_path.rglob("*.kv"))
    assert len(files) >= CONVERSATIONS - 1  # the last two may still be only in slots at the stop
    spoiled = files[0]
    spoiled.write_bytes(spoiled.read_bytes()[:-100])

    engine = _engine(model, tmp_path)
    try:
        assert engine.stats().prefix_cache["disk_rejected"] == 1  # type: ignore[index]
        assert not spoiled.exists()
        restored = 0
        for i in range(CONVERSATIONS):
            prompt = _prompt(model, i)
            text, end = _ask(engine, prompt)
            assert text == cold[i]
            restored += end.cached_tokens == len(prompt) - 1
        assert restored >= CONVERSATIONS - 3  # every file but the spoiled one (and two never written)
    finally:
        engine.stop()
