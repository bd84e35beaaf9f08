"""The store behind `previous_response_id`: each stored response's chat conversation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]
"""One chat message, in the shape a Chat Completions body carries it."""

MAX_STORED = 1000
"""Responses kept for `previous_response_id`, oldest dropped first."""
MAX_AGE_S = 3600.0
"""How long a stored response can be continued, in seconds."""


@dataclass(frozen=True)
class _Stored:
    at: float
    conversation: tuple[Message, ...]


class ResponseStore:
    """Conversations of stored responses by response id, bounded in count and in age.

    Entries are kept in the order they were stored, so the oldest is the first to go both when
    the count is over `max_count` and when it is `max_age_s` old. A chain's entries share their
    message objects (a follow-up's conversation is its predecessor's messages plus its own), so a
    long agent session costs its messages once, not once per turn. Stored messages are never
    changed: what leaves for a model server is a copy.
    """

    def __init__(self, max_count: int, max_age_s: float, now: Callable[[], float]) -> None:
        self._max_count = max_count
        self._max_age_s = max_age_s
        self._now = now
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(self, response_id: str, conversation: list[Message]) -> None:
        """Keep `conversation` (the chain up to and including the response's answer)."""
        self._expire()
        self._items[response_id] = _Stored(self._now(), tuple(conversation))
        self._items.move_to_end(response_id)
        while len(self._items) > self._max_count:
            self._items.popitem(last=False)

    def conversation(self, response_id: str) -> list[Message] | None:
        """The stored chain of `response_id` (its messages read-only), or None if unknown or expired."""
        self._expire()
        stored = self._items.get(response_id)
        return None if stored is None else list(stored.conversation)

    def _expire(self) -> None:
        oldest_kept = self._now() - self._max_age_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.at > oldest_kept:
                return
            self._items.popitem(last=False)
