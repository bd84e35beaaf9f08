"""A model this node was asked to serve, before it has a model server (pure).

``Resolving`` (its name becoming a file, downloading if allowed) and then gone, or
``Failed(reason)``. `PendingModels` holds them, and `PendingModels.set` is the one transition,
logged old -> new. Each record's `text` is what status and gossip have always shown; code decides
on the type, never on the text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolving:
    """The model's name is being turned into a file (downloaded first if allowed)."""

    kind = "resolving"

    @property
    def text(self) -> str:
        return "resolving"


@dataclass(frozen=True)
class Failed:
    """The model cannot be served here; `reason` says why."""

    reason: str
    kind = "failed"

    @property
    def text(self) -> str:
        return f"failed: {self.reason}"


PendingState = Resolving | Failed


class PendingModels:
    """Models asked for that have no model server yet: model spec -> its state."""

    def __init__(self) -> None:
        self._states: dict[str, PendingState] = {}

    def set(self, spec: str, new: PendingState | None) -> None:
        """The one transition: move `spec` to `new` (None: it has left, served or dropped)."""
        old = self._states.get(spec)
        if old == new:
            return
        log.info("model %s: %s -> %s", spec, _text(old), _text(new))
        if new is None:
            del self._states[spec]
        else:
            self._states[spec] = new

    def get(self, spec: str) -> PendingState | None:
        return self._states.get(spec)

    def items(self) -> list[tuple[str, PendingState]]:
        """(spec, state) pairs in spec order."""
        return sorted(self._states.items())

    def failures(self) -> list[str]:
        """Why each failed model failed, in the order they were asked for."""
        return [s.reason for s in self._states.values() if isinstance(s, Failed)]

    def __bool__(self) -> bool:
        return bool(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)


def _text(state: PendingState | None) -> str:
    return "-" if state is None else state.text
