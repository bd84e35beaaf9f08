"""The states of the node's small state machines, as typed records that carry their data (pure).

Three machines live here:

* a model the node was asked to serve, before it has a model server: ``Resolving`` (its name
  becoming a file, downloading if allowed) and then gone, or ``Failed(reason)``. `PendingModels`
  holds them, and `PendingModels.set` is the one transition, logged old -> new.
* a model this node hosts as a split (`split.SplitHost`): ``Planning`` -> ``WaitingForCapacity``
  / ``WaitingForWorkers`` / ``NoLinkToWorker`` -> ``Loading`` -> ``Serving``, or ``SplitFailed``.
  `SplitHost.set_state` is its one transition.
* a standby node: ``StandbyIdle`` -> ``PickingUp(model)`` (resolving and loading a model the mesh
  gave it) -> ``StandbyIdle``. `StandbyMachine.set` is its one transition.

Each record's `text` is what status and gossip have always shown (``"failed: …"``,
``"waiting for workers a, b"``), so old and new nodes and the console read the same words; code
decides on the type, never on the text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


# ---- a model being resolved ----------------------------------------------------------------


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


# ---- a standby looking for work --------------------------------------------------------------


@dataclass(frozen=True)
class StandbyIdle:
    """Waiting for the mesh-wide rules to give this standby a model."""

    model = None

    @property
    def text(self) -> str:
        return "idle"


@dataclass(frozen=True)
class PickingUp:
    """Taking on `model` (resolving, perhaps downloading, then loading it) until it serves."""

    model: str

    @property
    def text(self) -> str:
        return f"loading {self.model}"


StandbyState = StandbyIdle | PickingUp


class StandbyMachine:
    """A standby's state, moved only through `set`, which logs old -> new."""

    def __init__(self) -> None:
        self.state: StandbyState = StandbyIdle()

    def set(self, new: StandbyState) -> None:
        """The one transition of the standby's state."""
        if new != self.state:
            log.info("standby: %s -> %s", self.state.text, new.text)
            self.state = new


# ---- a model hosted as a split -------------------------------------------------------------


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


def _text(state: PendingState | SplitHostState | None) -> str:
    return "-" if state is None else state.text


def log_transition(what: str, old: SplitHostState, new: SplitHostState) -> None:
    """Log a split host's move from `old` to `new` (callers skip moves to the same state)."""
    log.info("split host %s: %s -> %s", what, old.text, new.text)
