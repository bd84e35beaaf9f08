"""Prefix affinity (pure): which conversation a chat body opens, and who recently served which.

`prefix_digest` names a request's leading messages: its tools, its leading system (or developer)
messages and the first message after them, the conversation's opening. Every later turn of a
conversation resends that opening unchanged and extends it, so every turn has the same digest,
and the host that served the previous turn holds its whole prompt so far warm in its slots or
prefix cache. Two conversations under one agent's system prompt differ in their opening and may
spread over hosts (each host needs the shared system prompt only once).

The digest is canonical JSON (sorted keys, no spaces) hashed with BLAKE2b: the same body gives the
same digest on every node and every version that keeps this function. Tools are hashed in the
order given: a chat template renders them in that order, so a reordered list is another prompt,
and another KV prefix.

`PrefixMemory` keeps, per (model, host), the digests most recently routed there, newest first,
bounded; a digest sits with one host only (the one that got its latest turn, which holds the
longest prefix).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

DIGEST_HEX: Final = 16  # 64 bits: a routing hint, where a rare collision costs one cold prefill
REMEMBERED: Final = 64  # digests kept per (model, host)
ADVERTISED: Final = 16  # of them, the newest a host advertises in gossip (its ModelAd)
_LEADING_ROLES: Final = frozenset({"system", "developer"})


def prefix_digest(body: Mapping[str, Any]) -> str | None:
    """The digest of a chat body's tools and opening messages; None when it has no messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None  # a /v1/completions prompt, or nothing to hold
    head: list[Any] = []
    for message in messages:
        head.append(message)
        if not (isinstance(message, Mapping) and message.get("role") in _LEADING_ROLES):
            break  # the first message of the conversation itself ends the opening
    tools = body.get("tools")
    try:
        text = json.dumps(
            {"tools": tools if tools else [], "head": head},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
    except (TypeError, ValueError):
        return None  # not JSON (cannot come from a parsed body; no affinity rather than a crash)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_HEX // 2).hexdigest()


class PrefixMemory:
    """Per (model, host), the digests most recently routed there: newest first, `limit` each."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._held: dict[tuple[str, str], OrderedDict[str, None]] = {}

    def record(self, model: str, host: str, digest: str) -> None:
        """`host` got a turn of `digest`'s conversation: it holds it now, and no other host does."""
        for (m, h), digests in self._held.items():
            if m == model and h != host:
                digests.pop(digest, None)
        digests = self._held.setdefault((model, host), OrderedDict())
        digests[digest] = None
        digests.move_to_end(digest, last=False)
        while len(digests) > self._limit:
            digests.popitem(last=True)

    def held(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(model, host) -> its digests, newest first (a copy: the table keeps it)."""
        return {key: tuple(d) for key, d in self._held.items() if d}
