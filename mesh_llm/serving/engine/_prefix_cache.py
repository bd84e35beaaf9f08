"""The engine's prefix cache beyond its slots: save a slot's KV before it is reused, restore the
longest saved prefix of a new prompt into its slot.

A slot about to take a prompt that does not extend its tokens is saved first (and so is a slot
whose request ended, once the engine is idle), whole, as llama.cpp's per-sequence state API
writes it. A new request gets the saved state sharing the longest prefix with its prompt when
that beats what its slot already shares; the state is loaded into the slot and trimmed to the
shared tokens, and only the rest of the prompt is prefilled. The states live in a `KvStore`.

Split hosts: llama.cpp writes a sequence's state through ggml's backend API, which reads and
writes tensors on RPC devices too, so the layers on the workers are saved and restored as well,
at the cost of moving their KV over the mesh. With flash attention off, V is stored transposed and
a save reads it one row at a time, one RPC round trip per row and worker layer (measured in
docs/models.md); restores write without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_llm.serving.engine._kv_index import Entry
from mesh_llm.serving.engine._kv_store import KvStore, llama_build, model_identity
from mesh_llm.serving.prefix_digest import DIGEST_LENGTHS, MAX_DIGESTS, prefix_digest

if TYPE_CHECKING:
    from mesh_llm.serving.engine._jobs import EngineConfig, Slot
    from mesh_llm.serving.engine._llama import Context, Model

log = logging.getLogger(__name__)

MIN_SAVE_TOKENS = 32  # shorter sequences cost more to look up than to prefill
MIN_GAIN = 16  # a restore must beat the slot's own reuse by this many tokens


class PrefixCache:
    """Saves and restores slots' KV through a `KvStore`; used by the engine thread only, except
    `stats` and `digests`."""

    def __init__(self, store: KvStore, ctx: Context) -> None:
        self.store = store
        self._ctx = ctx

    @classmethod
    def open(cls, model: Model, ctx: Context, config: EngineConfig) -> PrefixCache:
        """The cache ``config`` asks for; its files under ``config.cache_dir/<model digest>/``."""
        identity = model_identity(model.path)
        compat = f"{identity}|{llama_build()}|ctx={ctx.n_ctx_seq}|k={config.type_k}|v={config.type_v}"
        folder = (
            Path(config.cache_dir) / identity[:16] if config.cache_dir and config.cache_disk > 0 else None
        )
        store = KvStore(config.cache_ram, config.cache_disk, folder, compat)
        log.info(
            "prefix cache: %.2f GB of RAM, %.2f GB of disk%s",
            config.cache_ram / 1e9, config.cache_disk / 1e9, f" in {folder}" if folder else "",
        )  # fmt: skip
        return cls(store, ctx)

    def save(self, slot: Slot) -> None:
        """Keep the slot's whole sequence, unless it is short or already held."""
        tokens = slot.cached
        if len(tokens) < MIN_SAVE_TOKENS or self.store.holds(tokens):
            return
        started = time.perf_counter()
        data = self._ctx.save_seq(slot.seq)
        elapsed = time.perf_counter() - started
        self.store.figures.save_s_total += elapsed
        self.store.figures.save_s_last = elapsed
        self.store.put(list(tokens), data)

    def fetch(self, prompt: list[int], reuse: int, ready: Callable[[], None]) -> bool:
        """True if the saved state `prepare` would restore for ``prompt`` (its slot sharing
        ``reuse`` tokens with it) is in RAM, or if it would restore none; else its file is being
        read off the engine thread and ``ready`` is called after."""
        entry, shared = self.store.best(prompt)
        if entry is None or min(shared, len(prompt) - 1) < max(MIN_SAVE_TOKENS, reuse + MIN_GAIN):
            return True
        return self.store.fetch(entry, ready)

    def prepare(self, slot: Slot, prompt: list[int], reuse: int) -> tuple[int, bool]:
        """Before ``slot`` takes ``prompt`` (sharing ``reuse`` tokens with it): save what the slot
        would lose, restore a saved prefix that beats ``reuse``. Returns the tokens now usable
        (``slot.cached`` holds them, possibly more) and whether they came from the cache."""
        figures = self.store.figures
        limit = len(prompt) - 1  # the last prompt token is decoded for its logits
        entry, shared = self.store.best(prompt)
        shared = min(shared, limit)
        if entry is None or shared < max(MIN_SAVE_TOKENS, reuse + MIN_GAIN):
            if reuse < len(slot.cached):
                self.save(slot)
            if reuse > 0:
                figures.slot_hits += 1
            else:
                figures.misses += 1
            return reuse, False
        if reuse < len(slot.cached):
            self.save(slot)
        started = time.perf_counter()
        restored = self._restore(slot, entry, shared)
        if restored == 0:
            figures.misses += 1
            return 0, False
        elapsed = time.perf_counter() - started
        figures.hits += 1
        figures.restored_tokens += restored
        figures.restore_s_total += elapsed
        figures.restore_s_last = elapsed
        log.debug("prefix cache: restored %d tokens in %.3f s", restored, elapsed)
        return restored, True

    def _restore(self, slot: Slot, entry: Entry, shared: int) -> int:
        """Load ``entry`` into the slot and trim it to ``shared`` tokens; 0 (the slot empty) if
        that failed."""
        data = self.store.load(entry)
        if data is not None and self._ctx.load_seq(slot.seq, data):
            slot.cached[:] = entry.tokens
            if shared == len(entry.tokens) or self._ctx.drop_from(slot.seq, shared):
                del slot.cached[shared:]
                return shared
        else:
            log.warning("prefix cache: could not restore a saved state of %d tokens", len(entry.tokens))
        self._ctx.clear_seq(slot.seq)
        slot.cached.clear()
        return 0

    def stats(self) -> dict[str, Any]:
        return self.store.stats()

    def digests(self, slots: list[list[int]]) -> list[str]:
        """`prefix_digest`s of what the slots (given as their tokens) and the store hold."""
        found = [prefix_digest(t, n) for t in slots for n in DIGEST_LENGTHS if len(t) >= n]
        return list(dict.fromkeys(found + self.store.digests(DIGEST_LENGTHS)))[:MAX_DIGESTS]

    def close(self) -> None:
        self.store.close()


def slot_digests(slots: list[list[int]]) -> list[str]:
    """`prefix_digest`s of the slots' tokens alone (an engine without a prefix cache)."""
    found = [prefix_digest(t, n) for t in slots for n in DIGEST_LENGTHS if len(t) >= n]
    return list(dict.fromkeys(found))[:MAX_DIGESTS]
