"""Warnings about peer input that a flood cannot turn into a flood of log lines (pure).

Whatever a peer sends wrong is worth one line in the log, not one line per message: a member
sending a thousand malformed messages a second would otherwise write gigabytes a day. Two
helpers, each owned by the component that rejects the input (no module-global state):

- `RateLimitedLog` logs the first warning of a kind, then at most one per `every_s`; what it
  held back is summarised when the next one is logged ("N more like this in the last M s").
- `WarnOnce` says a thing once per key (a peer and a model name, say), remembering at most
  `max_keys` keys, oldest forgotten first, and rate-limits what it says as above.

Both take `now` from the caller when it has one (the sans-IO cores), else read the monotonic clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

DEFAULT_EVERY_S: Final = 10.0
MAX_KINDS: Final = 64  # kinds are a handful of fixed strings; the bound only guards against misuse
DEFAULT_MAX_KEYS: Final = 1024


@dataclass(slots=True)
class _Window:
    logged_at: float
    held: int = 0  # warnings held back since `logged_at`


class RateLimitedLog:
    """At most one WARNING per kind per `every_s`; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, every_s: float = DEFAULT_EVERY_S) -> None:
        self._logger = logger
        self._every_s = every_s
        self._windows: dict[str, _Window] = {}

    def warning(self, kind: str, message: str, *args: object, now: float | None = None) -> bool:
        """Log `message % args` unless `kind` was logged less than `every_s` ago; True if logged."""
        now = time.monotonic() if now is None else now
        window = self._windows.get(kind)
        if window is not None and now - window.logged_at < self._every_s:
            window.held += 1
            return False
        if window is not None and window.held:
            self._logger.warning(
                "%d more like this in the last %.0f s: %s", window.held, now - window.logged_at, kind
            )
        self._logger.warning(message, *args)
        self._windows.pop(kind, None)
        self._windows[kind] = _Window(now)  # re-inserted: the dict stays ordered by last use
        if len(self._windows) > MAX_KINDS:
            del self._windows[next(iter(self._windows))]
        return True

    def held(self, kind: str) -> int:
        """How many warnings of `kind` are held back, waiting for the next summary."""
        window = self._windows.get(kind)
        return 0 if window is None else window.held


class WarnOnce:
    """Warn once per key, remembering at most `max_keys` keys; the warnings are rate-limited."""

    def __init__(
        self,
        logger: logging.Logger,
        kind: str,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        every_s: float = DEFAULT_EVERY_S,
    ) -> None:
        self._kind = kind
        self._max_keys = max_keys
        self._seen: dict[Hashable, None] = {}  # insertion-ordered: the oldest key goes first
        self._log = RateLimitedLog(logger, every_s)

    def __len__(self) -> int:
        return len(self._seen)

    def warn(self, key: Hashable, message: str, *args: object, now: float | None = None) -> None:
        """Log `message % args` the first time `key` is seen (as far as memory allows)."""
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > self._max_keys:
            del self._seen[next(iter(self._seen))]
        self._log.warning(self._kind, message, *args, now=now)
