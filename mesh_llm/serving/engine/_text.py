"""Turning generated token bytes into text deltas (pure): UTF-8 across tokens, stop strings.

A token may end in the middle of a UTF-8 character, and a stop string may span several
tokens. `TextStream` takes token bytes one at a time and returns the text that is safe to
send now: complete characters, minus any tail that could still turn out to be the start of a
stop string. When a stop string completes, the text before it is released and nothing after.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TextStream:
    """Incremental detokenizer with stop-string detection and hold-back."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._pending = ""  # decoded text not yet released (could start a stop string)
        self.text = ""  # everything released so far
        self.stopped: str | None = None  # the stop string that ended the text, if any

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the newly releasable text ('' if none)."""
        if self.stopped is not None:
            return ""
        self._pending += self._decoder.decode(data)
        if not self._stops:
            out, self._pending = self._pending, ""
            self.text += out
            return out
        cut = self._first_stop()
        if cut is not None:
            index, stop = cut
            out = self._pending[:index]
            self._pending = ""
            self.stopped = stop
            self.text += out
            return out
        keep = self._partial_tail()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        self.text += out
        return out

    def flush(self) -> str:
        """The generation ended without a stop string: release whatever was held back."""
        if self.stopped is not None:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.text += out
        return out

    def _first_stop(self) -> tuple[int, str] | None:
        # Search from a little before the pending text too: held-back text is only pending.
        best: tuple[int, str] | None = None
        for stop in self._stops:
            i = self._pending.find(stop)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, stop)
        return best

    def _partial_tail(self) -> int:
        """How many trailing characters of the pending text begin some stop string."""
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:k]):
                    longest = k
                    break
        return longest
