"""Which addresses learned from gossip the node dials, and when (pure: `now` is passed in).

Every node in the view is dialled so that the mesh is a full mesh where it can be. But the
addresses come from members' gossip, and a member can invent them: each dial of a learned
address is paid from a token bucket (`rate_per_s`, at most `burst` at once), and what waits is a
bounded set, one entry a node, the newest addresses kept. A flood of fake nodes then costs a
few dials a second, never one per fake.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DialBudget:
    """How fast the node dials addresses it learned from gossip."""

    rate_per_s: float = 2.0
    burst: int = 8
    max_waiting: int = 512


class LearnedDials:
    """Learned addresses waiting for a dial, released at the budget's rate."""

    def __init__(self, budget: DialBudget) -> None:
        self._budget = budget
        self._tokens = float(budget.burst)
        self._refilled: float | None = None
        self._waiting: dict[str, tuple[str, ...]] = {}  # insertion-ordered: oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, node_id: str, addresses: tuple[str, ...]) -> None:
        """`node_id` entered the view at `addresses`: dial it when the budget allows."""
        if not addresses:
            return
        self._waiting.pop(node_id, None)
        self._waiting[node_id] = addresses
        if len(self._waiting) > self._budget.max_waiting:
            del self._waiting[next(iter(self._waiting))]

    def forget(self, node_id: str) -> None:
        """`node_id` left the view, or linked by itself: no dial is owed."""
        self._waiting.pop(node_id, None)

    def due(self, now: float) -> list[tuple[str, tuple[str, ...]]]:
        """The waiting nodes whose dial the budget pays for now, oldest first."""
        budget = self._budget
        if self._refilled is not None:
            self._tokens = min(float(budget.burst), self._tokens + (now - self._refilled) * budget.rate_per_s)
        self._refilled = now
        out: list[tuple[str, tuple[str, ...]]] = []
        while self._waiting and self._tokens >= 1.0:
            node_id = next(iter(self._waiting))
            out.append((node_id, self._waiting.pop(node_id)))
            self._tokens -= 1.0
        return out
