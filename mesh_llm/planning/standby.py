"""A standby node's state (pure): ``StandbyIdle`` -> ``PickingUp(model)`` -> ``StandbyIdle``.

``PickingUp`` covers resolving and loading a model the mesh-wide rules (`planning.demand`) gave
it. `StandbyMachine.set` is its one transition, logged old -> new. Each record's `text` is what
status and gossip have always shown; code decides on the type, never on the text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


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
