"""The KV prefix cache's bookkeeping (pure) and its files on disk (no model: states are bytes)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.serving.engine._kv_index import KvIndex, entry_key
from mesh_llm.serving.engine._kv_store import MAGIC, KvStore
from mesh_llm.serving.engine._prefix_cache import PrefixCache
from mesh_llm.serving.prefix_digest import DIGEST_LENGTHS, prefix_digest

# A request sequence: token sequences drawn from a few short "conversations" so prefixes repeat.
requests = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 12), st.integers(1, 400)), min_size=1, max_size=60
)


@given(st.integers(0, 2000), requests)
@settings(max_examples=200, deadline=None)
def test_the_budget_is_never_exceeded_and_no_entry_is_a_prefix_of_another(budget: int, seq: list) -> None:
    index = KvIndex(budget)
    for conv, length, size in seq:
        tokens = [conv, *range(length)]
        added = index.add(tokens, size)
        assert index.total <= budget
        assert index.total == sum(e.size for e in index.entries())
        if size > budget:
            assert added.entry is None or not added.new
        held = [e.tokens for e in index.entries()]
        for a in held:
            for b in held:
                assert a == b or b[: len(a)] != a, "a prefix of a held entry is held beside it"


def test_a_longer_sequence_replaces_its_prefix() -> None:
    index = KvIndex(1000)
    index.add([1, 2, 3], 10)
    index.add([9, 9], 10)
    added = index.add([1, 2, 3, 4, 5], 20)
    assert [e.tokens for e in added.dropped] == [(1, 2, 3)]
    assert sorted(e.tokens for e in index.entries()) == [(1, 2, 3, 4, 5), (9, 9)]
    assert index.total == 30


def test_a_sequence_already_covered_adds_nothing() -> None:
    index = KvIndex(1000)
    index.add([1, 2, 3, 4], 40)
    added = index.add([1, 2], 20)
    assert not added.new and added.entry is not None and added.entry.tokens == (1, 2, 3, 4)
    assert index.total == 40


def test_the_least_recently_used_entry_goes_first() -> None:
    index = KvIndex(30)
    for t in (1, 2, 3):
        index.add([t, 0], 10)
    index.touch(entry_key([1, 0]))  # 2 is now the oldest
    added = index.add([4, 0], 10)
    assert [e.tokens for e in added.dropped] == [(2, 0)]
    best, shared = index.best([1, 0, 7])
    assert best is not None and best.tokens == (1, 0) and shared == 2


def test_prefix_digests_are_those_of_the_documented_shape() -> None:
    tokens = list(range(5000))
    index = KvIndex(10**9)
    index.add(tokens, 1)
    digests = index.digests(DIGEST_LENGTHS)
    assert digests == [prefix_digest(tokens, n) for n in DIGEST_LENGTHS]
    assert all(len(d) == 32 and int(d, 16) >= 0 for d in digests)
    assert prefix_digest([1, 2, 3, 4], 2) == prefix_digest([1, 2, 9], 2) != prefix_digest([1, 3], 2)


def _store(folder: Path, compat: str = "model-a|build-1") -> KvStore:
    return KvStore(10**6, 10**6, folder, compat)


def _saved(folder: Path, tokens: list[int], data: bytes, compat: str = "model-a|build-1") -> Path:
    store = _store(folder, compat)
    store.put(tokens, bytearray(data))
    store.close()
    (path,) = folder.glob("*.kv")
    return path


def test_states_on_disk_are_found_by_a_new_store(tmp_path: Path) -> None:
    _saved(tmp_path, list(range(100)), b"state" * 100)
    store = _store(tmp_path)
    entry, shared = store.best([*range(80), 7, 7])
    assert entry is not None and shared == 80
    assert store.load(entry) == bytearray(b"state" * 100)
    assert store.holds(list(range(100)))  # now in RAM too


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda raw: raw[: len(raw) - 7], id="truncated"),
        pytest.param(lambda raw: b"NOTMINE!" + raw[8:], id="foreign magic"),
        pytest.param(lambda raw: raw[:-3] + b"xyz", id="corrupt state"),
        pytest.param(lambda raw: raw[:12] + b"[" + raw[13:], id="corrupt header"),
    ],
)
def test_a_bad_file_is_skipped_removed_and_logged(tmp_path: Path, spoil, caplog) -> None:
    path = _saved(tmp_path, list(range(100)), b"state" * 100)
    path.write_bytes(spoil(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        store = _store(tmp_path)
        entry, _ = store.best(list(range(100)))
        assert entry is None or store.load(entry) is None
    assert not path.exists()
    assert "prefix cache: removing" in caplog.text
    assert store.stats()["disk_rejected"] == 1


def test_a_file_saved_under_another_model_or_build_is_never_used(tmp_path: Path) -> None:
    path = _saved(tmp_path, list(range(100)), b"state" * 100, compat="model-a|build-1")
    assert path.read_bytes().startswith(MAGIC)
    store = _store(tmp_path, compat="model-a|build-2")
    assert store.best(list(range(100))) == (None, 0) and not path.exists()


def test_a_write_cut_short_leaves_nothing_that_is_read(tmp_path: Path) -> None:
    (tmp_path / "0123.tmp999").write_bytes(MAGIC + b"half")
    store = _store(tmp_path)
    assert store.best([1, 2, 3]) == (None, 0) and list(tmp_path.iterdir()) == []


def test_the_disk_budget_holds_across_runs(tmp_path: Path) -> None:
    for conv in range(5):
        store = KvStore(10**6, 1200, tmp_path, "c")
        store.put([conv] * 50, bytearray(500))
        store.close()
        assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) <= 1200 + 2 * 1024
        assert len(store.disk) <= 2


def test_the_cache_budget_reaches_the_model_server_and_comes_out_of_the_offered_ram(tmp_path: Path) -> None:
    from mesh_llm.config import BackendConfig
    from mesh_llm.models.resolve import ResolvedModel
    from mesh_llm.serving.hardware import capacity_from_devices
    from mesh_llm.serving.model_server import ModelServer
    from mesh_llm.settings import model_server_parser

    config = BackendConfig(cache_ram_bytes=3 << 30, cache_disk_bytes=5 << 30, cache_dir=tmp_path / "kv")
    server = ModelServer(ResolvedModel("m", tmp_path / "m.gguf", 1), config, tmp_path)
    try:
        args = model_server_parser().parse_args(server._command()[3:])
    finally:
        server._listener.close()
    assert (args.cache_ram, args.cache_disk, args.cache_dir) == (3 << 30, 5 << 30, str(tmp_path / "kv"))
    whole = capacity_from_devices([], None, ram_total=64 << 30, ram_available=32 << 30)
    less = capacity_from_devices([], None, ram_total=64 << 30, ram_available=32 << 30, reserved_ram=3 << 30)
    assert whole.offered_bytes - less.offered_bytes == 3 << 30


def test_a_state_on_disk_is_fetched_into_ram_by_the_reader_thread(tmp_path: Path) -> None:
    path = _saved(tmp_path, list(range(100)), b"state" * 100)
    store = _store(tmp_path)
    entry, _ = store.best(list(range(100)))
    assert entry is not None
    called: list[str] = []
    done = threading.Event()

    def ready() -> None:
        called.append(threading.current_thread().name)
        if len(called) == 2:
            done.set()

    assert not store.fetch(entry, ready)  # on disk only: read elsewhere, the caller not held up
    assert not store.fetch(entry, ready)  # a second asker waits for the same read
    assert done.wait(10)
    store.close()
    assert called == ["kv-reader", "kv-reader"]
    path.unlink()  # from now on only RAM can answer
    assert store.fetch(entry, ready)
    assert store.load(entry) == bytearray(b"state" * 100)


def test_the_reader_outlives_a_failing_callback_and_a_slot_that_holds_as_much_asks_for_no_read(
    tmp_path: Path,
) -> None:
    _saved(tmp_path, list(range(100)), b"state" * 100)
    store = _store(tmp_path)
    cache = PrefixCache(store, None)  # type: ignore[arg-type]  # fetch never touches the context
    prompt = [*range(100), 7, 7]
    # The slot already holds 95 of the prompt's tokens: the 100 on disk do not beat that by enough.
    assert cache.fetch(prompt, 95, lambda: None)
    done = threading.Event()

    def fails() -> None:
        done.set()
        raise RuntimeError("a broken waiter")

    assert not cache.fetch(prompt, 10, fails)
    assert done.wait(10)
    # The state is in RAM now, and the reader lives on for the next one.
    assert cache.fetch(prompt, 10, lambda: None)
    assert store._reader.is_alive()
    store.close()
