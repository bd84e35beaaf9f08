"""The engine's side of speculative decoding: per step, which slots draft and how many tokens,
the drafter's own time per token, and what drafting has come to, for status.

The pieces it uses are in `_draft` (the tuner, the step-cost line, the guard) and `_drafter`;
the engine owns one `Drafting` while it has a drafter and calls it only from its loop thread
(`figures` under the engine's lock).
"""

from __future__ import annotations

import time
from typing import Any

from mesh_llm.serving.engine._draft import Drafter, DraftGuard, DraftRequest, DraftStats, StepCost
from mesh_llm.serving.engine._jobs import Slot


class Drafting:
    """A drafter and the figures that decide how much it drafts."""

    def __init__(self, drafter: Drafter) -> None:
        self.drafter = drafter
        self.step_cost = StepCost()
        self.guard = DraftGuard()
        self._stats = DraftStats()
        self._s_per_token = 0.0  # the drafter's own time per draft token (EWMA)

    def propose(self, generating: list[Slot], n_ctx_slot: int) -> dict[int, list[int]]:
        """Draft tokens per slot for this step (none for a slot where drafting does not pay)."""
        requests = []
        for s in generating:
            job = s.job
            assert job is not None and job.next_token is not None and s.tuner is not None
            room = min(job.max_tokens - job.generated - 1, n_ctx_slot - len(s.cached) - 2)
            k = min(s.tuner.choose(self.step_cost, self._s_per_token, len(generating) - 1), room)
            if k > 0:
                requests.append(DraftRequest(s.seq, [*s.cached, job.next_token], k))
        if not requests:
            return {}
        t0 = time.perf_counter()
        proposals = self.drafter.propose(requests)
        measured = self.drafter.seconds_per_token
        if measured is not None:  # a draft model times its own draft steps
            self._s_per_token = measured
        else:
            per_token = (time.perf_counter() - t0) / max(r.k for r in requests)
            self._s_per_token = 0.8 * self._s_per_token + 0.2 * per_token
        return {r.seq: p[: r.k] for r, p in zip(requests, proposals, strict=True) if p}

    def judged(self, s: Slot, drafted: int, accepted: int) -> None:
        """The main model kept `accepted` of the `drafted` tokens behind the slot's next token."""
        self._stats.record(drafted, accepted)
        if s.tuner is not None:
            s.tuner.record(drafted, accepted)

    def figures(self) -> dict[str, Any]:
        """Drafting's totals, and what the tuner weighs: a decode step's cost line and the
        drafter's time per token."""
        fixed, per_token = self.step_cost.line()
        return {
            **self._stats.as_dict(self.drafter.name),
            "step_ms": round(fixed * 1000, 3),
            "step_ms_per_token": round(per_token * 1000, 3),
            "draft_ms_per_token": round(self._s_per_token * 1000, 3),
        }
