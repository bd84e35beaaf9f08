"""The states of a model this node hosts as a split (`SplitHost`), as typed records (pure).

``Planning`` -> ``WaitingForCapacity`` / ``WaitingForWorkers`` / ``NoLinkToWorker`` ->
``Loading`` -> ``Serving``, or ``SplitFailed``. `SplitHost.set_state` is its one transition, and
logs it through `log_transition`. Each record's `text` is what status and gossip have always shown
(``"waiting for workers a, b"``), so old and new nodes and the console read the same words; code
decides on the type, never on the text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planning:
    """No plan yet."""

    @property
    def text(self) -> str:
        return "planning"


@dataclass(frozen=True)
class WaitingForCapacity:
    """The mesh has too little memory for the model now; `reason` is the planner's."""

    reason: str

    @property
    def text(self) -> str:
        return f"waiting for capacity: {self.reason}"


@dataclass(frozen=True)
class WaitingForWorkers:
    """The plan's workers (short node ids) have not advertised their RPC worker ready yet."""

    missing: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"waiting for workers {', '.join(self.missing)}"


@dataclass(frozen=True)
class NoLinkToWorker:
    """No mesh connection to a worker of the plan (short node id)."""

    node_id: str

    @property
    def text(self) -> str:
        return f"no link to worker {self.node_id}"


@dataclass(frozen=True)
class Loading:
    """The model server is starting (its workers are ready)."""

    @property
    def text(self) -> str:
        return "loading"


@dataclass(frozen=True)
class Serving:
    """The model server answers requests."""

    @property
    def text(self) -> str:
        return "serving"


@dataclass(frozen=True)
class SplitFailed:
    """The last reconcile failed; `reason` says why. The next reconcile tries again."""

    reason: str

    @property
    def text(self) -> str:
        return f"failed: {self.reason}"


SplitHostState = (
    Planning | WaitingForCapacity | WaitingForWorkers | NoLinkToWorker | Loading | Serving | SplitFailed
)


def log_transition(what: str, old: SplitHostState, new: SplitHostState) -> None:
    """Log a split host's move from `old` to `new` (callers skip moves to the same state)."""
    log.info("split host %s: %s -> %s", what, old.text, new.text)
