"""A draft model next to the main one: its own context, one KV sequence per slot."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mesh_llm.serving.engine._draft import DraftRequest, softmax_max
from mesh_llm.serving.engine._llama import Batch, Context, Model
from mesh_llm.serving.engine._text import common_prefix


class ModelDrafter:
    """Drafts greedily with a small model of the main model's vocabulary.

    Each call first brings every slot's draft cache up to the slot's context (only the tokens
    it lacks: the draft keeps its own KV per slot, trimmed where the main model rejected), then
    drafts one token for every slot per draft decode. A draft token the draft model itself is
    unsure of (probability below `p_min`) ends that slot's draft: verifying it would be waste.
    """

    def __init__(
        self,
        model: Model,
        *,
        name: str,
        n_seq: int,
        n_ctx_seq: int,
        n_batch: int,
        n_threads: int,
        n_threads_batch: int,
        p_min: float = 0.5,
    ) -> None:
        self.name = name
        self.model = model
        self.ctx = Context(
            model,
            n_seq=n_seq,
            n_ctx_seq=n_ctx_seq,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch,
        )
        self._batch = Batch(n_batch)
        self._cached: dict[int, list[int]] = {seq: [] for seq in range(n_seq)}
        self._p_min = p_min
        self.seconds_per_token: float | None = 0.0  # time per draft decode, catch-up excluded (EWMA)

    def forget(self, seq: int) -> None:
        self.ctx.clear_seq(seq)
        self._cached[seq] = []

    def propose(self, requests: Sequence[DraftRequest]) -> list[list[int]]:
        """Draft for each request; also updates `seconds_per_token` from the draft decodes."""
        out: list[list[int]] = [[] for _ in requests]
        batch = self._batch
        batch.clear()
        # (request index, batch index of the token whose logits give the next draft token)
        drafting: list[tuple[int, int]] = []
        for r, req in enumerate(requests):
            cached = self._cached[req.seq]
            keep = common_prefix(cached, req.context)
            if keep == len(req.context):
                keep -= 1  # decode the last token again for its logits
            if keep < len(cached):
                if not self.ctx.drop_from(req.seq, keep):
                    self.forget(req.seq)
                    keep = 0
                del self._cached[req.seq][keep:]
            missing = list(req.context[keep:])
            if req.k <= 0 or len(req.context) + req.k >= self.ctx.n_ctx_seq:
                continue
            if len(missing) > batch.room:
                # A long catch-up (a new prompt): feed what fits, draft for this slot next step.
                take = batch.room
                for j in range(take):
                    batch.add(missing[j], keep + j, req.seq, False)
                self._cached[req.seq].extend(missing[:take])
                continue
            for j, token in enumerate(missing):
                index = batch.add(token, keep + j, req.seq, j == len(missing) - 1)
            self._cached[req.seq].extend(missing)
            drafting.append((r, index))
        first = True
        while drafting:
            t0 = time.perf_counter()
            if batch.n and self.ctx.decode(batch) != 0:
                for r, _ in drafting:
                    self.forget(requests[r].seq)
                return [[] for _ in requests]
            if not first:  # the first decode carries the catch-up; the rest are pure draft steps
                self.seconds_per_token = 0.7 * (self.seconds_per_token or 0.0) + 0.3 * (
                    time.perf_counter() - t0
                )
            first = False
            going: list[tuple[int, int]] = []
            next_tokens: list[tuple[int, int]] = []
            for r, index in drafting:
                token, p = softmax_max(self.ctx.logits(index))
                if p < self._p_min:
                    continue
                out[r].append(token)
                if len(out[r]) < requests[r].k:
                    next_tokens.append((r, token))
            batch.clear()
            for r, token in next_tokens:
                seq = requests[r].seq
                going.append((r, batch.add(token, len(self._cached[seq]), seq, True)))
                self._cached[seq].append(token)
            drafting = going
        return out

    def close(self) -> None:
        self.ctx.close()
        self._batch.close()
        self.model.close()
