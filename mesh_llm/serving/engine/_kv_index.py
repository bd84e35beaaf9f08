"""Which saved KV sequences a tier holds, within its byte budget (pure bookkeeping).

An entry is one whole sequence as llama.cpp's per-sequence state API saves it: the tokens whose
KV it holds and its size in bytes. The index keeps entries least recently used first and never
holds more bytes than its budget. Adding an entry drops every entry whose tokens are a prefix of
the new one's (the new one restores all they could), and adds nothing when an entry already holds
the new tokens or more. Both tiers (RAM and disk) use it; the caller moves the bytes and files.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mesh_llm.serving.engine._text import common_prefix
from mesh_llm.serving.prefix_digest import prefix_digest


def entry_key(tokens: Sequence[int]) -> str:
    """A name for a token sequence, usable as a file name."""
    raw = struct.pack(f"<{len(tokens)}i", *tokens)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    tokens: tuple[int, ...]
    size: int  # bytes of state


@dataclass(frozen=True)
class Added:
    """What `KvIndex.add` did: the entry now holding the tokens (None: too big for the budget)
    and the entries it dropped, replaced prefixes and least recently used alike."""

    entry: Entry | None
    dropped: tuple[Entry, ...]
    new: bool  # False: an entry already held these tokens (or more); nothing was added


class KvIndex:
    """Entries of one tier, least recently used first, at most ``budget`` bytes in all."""

    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.total = 0
        self._digests: dict[tuple[str, int], str] = {}  # (key, n) -> prefix_digest, computed once

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def entries(self) -> list[Entry]:
        """Least recently used first."""
        return list(self._entries.values())

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def best(self, prompt: Sequence[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and how many tokens it shares."""
        best: Entry | None = None
        shared = 0
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt)
            if n > shared:
                best, shared = entry, n
        return best, shared

    def covering(self, tokens: Sequence[int]) -> Entry | None:
        """An entry whose tokens start with all of ``tokens`` (saving them again would add nothing)."""
        for entry in self._entries.values():
            if len(entry.tokens) >= len(tokens) and common_prefix(entry.tokens, tokens) == len(tokens):
                return entry
        return None

    def touch(self, key: str) -> None:
        """Mark an entry as just used."""
        if key in self._entries:
            self._entries.move_to_end(key)

    def remove(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.total -= entry.size
            self._digests = {k: d for k, d in self._digests.items() if k[0] != key}
        return entry

    def add(self, tokens: Sequence[int], size: int, key: str | None = None) -> Added:
        """Hold ``tokens`` (``size`` bytes of state): drop the prefixes it replaces, then the least
        recently used entries until it fits. Too big for the whole budget: nothing changes."""
        tokens = tuple(tokens)
        held = self.covering(tokens)
        if held is not None:
            self.touch(held.key)
            return Added(held, (), False)
        if size > self.budget or not tokens:
            return Added(None, (), False)
        dropped: list[Entry] = []
        for entry in list(self._entries.values()):
            if common_prefix(entry.tokens, tokens) == len(entry.tokens):
                dropped.append(entry)
                self.remove(entry.key)
        while self.total + size > self.budget:
            oldest = next(iter(self._entries))
            dropped.append(self._entries[oldest])
            self.remove(oldest)
        entry = Entry(key or entry_key(tokens), tokens, size)
        self._entries[entry.key] = entry
        self.total += size
        return Added(entry, tuple(dropped), True)

    def digests(self, lengths: Sequence[int]) -> list[str]:
        """`prefix_digest` of each entry at each of ``lengths`` it reaches, most recent first."""
        out: list[str] = []
        for entry in reversed(self._entries.values()):
            for n in lengths:
                if len(entry.tokens) >= n:
                    found = self._digests.get((entry.key, n))
                    if found is None:
                        found = self._digests[(entry.key, n)] = prefix_digest(entry.tokens, n)
                    out.append(found)
        return out
