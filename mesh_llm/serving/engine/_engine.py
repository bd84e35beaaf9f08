"""The continuous-batching engine: slots, a bounded FIFO queue and one decode loop.

One thread runs the loop. Each step it (1) drops cancelled work, (2) moves queued requests
into free slots, preferring the slot whose cached tokens share the longest prefix with the
prompt, (3) builds one batch holding the next token of every generating slot plus at most one
chunk of some slot's prompt, (4) decodes it, and (5) samples a token for every slot that had
logits in the batch. A stream therefore never waits for more than one prompt chunk, and a
new request starts producing tokens while others keep streaming.

With a drafter (see _draft.py; `_drafting` decides how much it drafts each step), a generating
slot's next token goes into the batch followed by up to K draft tokens; the slot then samples at
each of them in turn and keeps the tokens up to the first one its own sample disagrees with, so
one step (one round trip on a split model) can produce several tokens. The KV of rejected drafts
is dropped again.

Results go back through a per-request callback run on the engine thread; the HTTP layer
forwards them into its event loop. A slot keeps its KV cache after its request ends, so the
next turn of the same conversation prefills only its new tokens.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
import threading
import time

from mesh_llm.errors import BackendError
from mesh_llm.serving.engine._draft import Drafter, DraftTuner
from mesh_llm.serving.engine._drafting import Drafting
from mesh_llm.serving.engine._jobs import (
    Delta,
    EngineConfig,
    EngineStats,
    Finished,
    FinishReason,
    Job,
    QueueFull,
    Slot,
    SlotStats,
    token_logprob,
)
from mesh_llm.serving.engine._llama import Batch, Context, Model, Sampler, SamplerSpec
from mesh_llm.serving.engine._prefix_cache import PrefixCache, slot_digests
from mesh_llm.serving.engine._text import TextStream, common_prefix

log = logging.getLogger(__name__)

_RATE_WINDOW_S = 5.0  # seconds of generated tokens the rate in `stats` is taken over


class Engine:
    """Owns the context and the decode thread. `submit` is thread-safe."""

    def __init__(self, model: Model, config: EngineConfig, drafter: Drafter | None = None) -> None:
        self.model = model
        self.config = config
        n_batch = config.batch_size(drafting=drafter is not None)
        self.ctx = Context(
            model,
            n_seq=config.n_slots,
            n_ctx_seq=config.n_ctx_slot,
            n_batch=n_batch,
            n_threads=config.n_threads,
            n_threads_batch=config.n_threads_batch,
            type_k=config.type_k,
            type_v=config.type_v,
            flash_attn=config.flash_attn,
        )
        self.n_ctx_slot = self.ctx.n_ctx_seq
        self._batch = Batch(n_batch)
        self._slots = [
            Slot(seq=i, tuner=DraftTuner(k_max=config.draft_max) if drafter else None)
            for i in range(config.n_slots)
        ]
        self._drafting = Drafting(drafter) if drafter else None
        self._cache = PrefixCache.open(model, self.ctx, config) if config.cache_ram > 0 else None
        self._unsaved: set[int] = set()  # slots whose request ended since they were last saved
        self._emitted = 0  # tokens emitted in the current step
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._generated_times: collections.deque[float] = collections.deque()
        self._generated_total = 0
        self._prompt_total = 0
        self._prefilled_total = 0
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if self._cache is not None:
            self._cache.close()

    # ---- requests -----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; raise QueueFull when the slots and the wait queue are all taken."""
        if not job.prompt:
            raise BackendError("the prompt is empty")
        with self._cond:
            busy = sum(1 for s in self._slots if s.job is not None)
            waiting = len(self._queue)
            if busy + waiting >= self.config.n_slots + self.config.max_queue:
                raise QueueFull(
                    f"all {self.config.n_slots} slots are busy and {waiting} requests are waiting"
                )
            self._queue.append(job)
            self._cond.notify_all()

    def make_sampler(self, spec: SamplerSpec) -> Sampler:
        """A sampler chain for one job; thread-safe, so callers can build it off the decode loop."""
        seed = spec.seed if spec.seed is not None else random.getrandbits(32)
        return Sampler(self.model, spec, seed)

    def wake(self) -> None:
        """Make an idle loop look at cancellations now."""
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> EngineStats:
        digests = tuple(self.prefix_digests())  # hashing outside the lock the decode loop takes
        with self._cond:
            now = time.monotonic()
            while self._generated_times and self._generated_times[0] < now - _RATE_WINDOW_S:
                self._generated_times.popleft()
            rate = len(self._generated_times) / _RATE_WINDOW_S
            return EngineStats(
                tuple(SlotStats.of(s) for s in self._slots),
                len(self._queue),
                rate,
                self._generated_total,
                self._prompt_total,
                self._prefilled_total,
                self._drafting.figures() if self._drafting else None,
                self._cache.stats() if self._cache else None,
                digests,
            )

    def prefix_digests(self) -> list[str]:
        """`mesh_llm.serving.prefix_digest` digests of the prefixes this engine holds KV for, in
        its slots and its prefix cache (thread-safe)."""
        held = [list(s.cached) for s in self._slots]
        return self._cache.digests(held) if self._cache else slot_digests(held)

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._has_work():
                        if self._unsaved:
                            break
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._drop_cancelled()
                    self._admit()
                if any(s.job for s in self._slots):
                    self._step()
                elif self._unsaved and self._cache is not None:
                    # Idle: keep a finished conversation, so a restart or a busy hour finds it.
                    slot = self._slots[self._unsaved.pop()]
                    if slot.job is None:
                        self._cache.save(slot)
        except Exception:  # a bug here would silently hang every request: fail them loudly
            log.exception("engine loop crashed")
            self._fail_all("the engine crashed", "the engine crashed")
            raise
        finally:
            self._fail_all("the model server is shutting down", "shutting down")

    def _fail_all(self, running: str, queued: str) -> None:
        """End every running and queued job with an error (the loop is ending)."""
        with self._cond:
            for s in self._slots:
                if s.job is not None:
                    self._finish(s, FinishReason.ERROR, running)
            while self._queue:
                job = self._queue.popleft()
                job.emit(Finished(FinishReason.ERROR, len(job.prompt), 0, 0, queued))

    def _drop_cancelled(self) -> None:
        if any(j.cancelled for j in self._queue):
            for job in [j for j in self._queue if j.cancelled]:
                self._queue.remove(job)
                if job.sampler is not None:
                    job.sampler.close()
                    job.sampler = None
                job.emit(Finished(FinishReason.CANCELLED, len(job.prompt), 0, 0))
        for s in self._slots:
            if s.job is not None and s.job.cancelled:
                self._finish(s, FinishReason.CANCELLED)

    def _has_work(self) -> bool:
        """A running job, or a queued one not waiting for its saved prefix to be read."""
        return any(s.job for s in self._slots) or any(j.disk != "reading" or j.cancelled for j in self._queue)

    def _admit(self) -> None:
        for job in [j for j in self._queue if j.disk != "reading"]:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            # Longest shared prefix first; among equals the least recently used slot.
            slot = max(free, key=lambda s: (common_prefix(s.cached, job.prompt), -s.last_used))
            if self._cache is not None and job.disk == "unasked":
                # A saved prefix only on disk that beats the slot's is read off this thread first.
                job.disk = "asked"
                reuse = min(common_prefix(slot.cached, job.prompt), len(job.prompt) - 1)
                if not self._cache.fetch(job.prompt, reuse, functools.partial(self._read_done, job)):
                    job.disk = "reading"
                    continue
            self._queue.remove(job)
            self._assign(slot, job)

    def _read_done(self, job: Job) -> None:
        with self._cond:
            job.disk = "asked"
            self._cond.notify_all()

    def _assign(self, slot: Slot, job: Job) -> None:
        reuse = common_prefix(slot.cached, job.prompt)
        reuse = min(reuse, len(job.prompt) - 1)  # the last prompt token is decoded for its logits
        self._unsaved.discard(slot.seq)
        if self._cache is not None:
            reuse, restored = self._cache.prepare(slot, job.prompt, reuse)
            if restored and self._drafting is not None:
                self._drafting.drafter.forget(slot.seq)
        if reuse < len(slot.cached) and not self.ctx.drop_from(slot.seq, reuse):
            self.ctx.clear_seq(slot.seq)  # e.g. recurrent models: no partial trimming
            if self._drafting is not None:
                self._drafting.drafter.forget(slot.seq)
            reuse = 0
        del slot.cached[reuse:]
        job.slot = slot.seq
        job.n_done = reuse
        job.reused = reuse
        if job.sampler is None:  # callers build it beforehand (a big grammar takes a while)
            try:
                job.sampler = self.make_sampler(job.sampling)
            except BackendError as exc:
                job.emit(Finished(FinishReason.ERROR, len(job.prompt), 0, 0, str(exc)))
                return
        job.text = TextStream(job.stops)
        slot.job = job
        self._prompt_total += len(job.prompt)

    def _step(self) -> None:
        batch = self._batch
        batch.clear()
        # Per slot: the batch indices to sample at, in order, and the draft tokens behind them.
        sample_at: list[tuple[Slot, list[int], list[int]]] = []
        generating = [s for s in self._slots if s.job is not None and s.job.next_token is not None]
        started = time.perf_counter()
        drafting = self._drafting is not None and bool(generating) and self._drafting.guard.allow()
        drafts = self._drafting.propose(generating, self.n_ctx_slot) if drafting and self._drafting else {}
        for s in generating:
            job = s.job
            assert job is not None and job.next_token is not None
            draft = drafts.get(s.seq, [])
            indices = [batch.add(job.next_token, len(s.cached), s.seq, True)]
            s.cached.append(job.next_token)
            job.next_token = None
            for j, token in enumerate(draft):
                indices.append(batch.add(token, len(s.cached) + j, s.seq, True))
            sample_at.append((s, indices, draft))
        budget = min(self.config.prefill_chunk, batch.room)
        prefilled = False
        prefilling = sorted(
            (s for s in self._slots if s.job is not None and s.job.n_done < len(s.job.prompt)),
            key=lambda s: s.job.queued_at if s.job else 0.0,
        )
        for s in prefilling:
            if budget <= 0:
                break
            job = s.job
            assert job is not None
            take = min(budget, len(job.prompt) - job.n_done)
            for k in range(take):
                pos = job.n_done + k
                last = pos == len(job.prompt) - 1
                index = batch.add(job.prompt[pos], pos, s.seq, last)
                if last:
                    sample_at.append((s, [index], []))
            s.cached.extend(job.prompt[job.n_done : job.n_done + take])
            job.n_done += take
            budget -= take
            prefilled = True
            self._prefilled_total += take
        if batch.n == 0:
            return
        t0 = time.perf_counter()
        rc = self.ctx.decode(batch)
        if self._drafting is not None:
            self._drafting.step_cost.record(batch.n, time.perf_counter() - t0)
        if rc != 0:
            log.error("llama_decode returned %d for a batch of %d tokens", rc, batch.n)
            with self._cond:
                for s in self._slots:
                    if s.job is not None:
                        self.ctx.clear_seq(s.seq)
                        s.cached.clear()
                        self._finish(s, FinishReason.ERROR, f"llama_decode failed ({rc})")
            return
        now = time.monotonic()
        self._emitted = 0
        with self._cond:
            for s, indices, draft in sample_at:
                if s.job is not None:
                    self._take_tokens(s, indices, draft, now)
        if self._drafting is not None and generating and not prefilled:
            self._drafting.guard.record(drafting, time.perf_counter() - started, self._emitted)

    def _take_tokens(self, s: Slot, indices: list[int], draft: list[int], now: float) -> None:
        """Sample at each index in turn while the samples agree with the draft behind them."""
        accepted = 0
        for j, index in enumerate(indices):
            token = self._take_token(s, index, now)
            self._emitted += 1
            if token is None or j >= len(draft) or token != draft[j]:
                break
            # The sample is the draft token decoded right after: its KV is already in place.
            accepted += 1
            s.cached.append(token)
            assert s.job is not None
            s.job.next_token = None
        if not draft:
            return
        if self._drafting is not None:  # (None once an earlier slot of this step turned drafting off)
            self._drafting.judged(s, len(draft), accepted)
        if accepted < len(draft) and not self.ctx.drop_from(s.seq, len(s.cached)):
            # A model whose cache cannot be trimmed: start the slot over, and stop drafting.
            self.ctx.clear_seq(s.seq)
            s.cached.clear()
            if s.job is not None:
                self._finish(s, FinishReason.ERROR, "this model cannot drop draft tokens from its cache")
            self._drafting = None

    def _take_token(self, s: Slot, index: int, now: float) -> int | None:
        """Sample the slot's next token at batch `index`; the token, or None if the job ended."""
        job = s.job
        assert job is not None and job.sampler is not None and job.text is not None
        if job.cancelled:
            self._finish(s, FinishReason.CANCELLED)
            return None
        token = job.sampler.sample(self.ctx, index)
        logprobs = (
            (token_logprob(self.ctx.logits(index), token, job.logprobs, self.model.text_piece),)
            if job.logprobs is not None
            else ()
        )
        if self.model.is_eog(token):
            tail = job.text.flush()
            if tail:  # the end token itself is no output: OpenAI gives it no logprobs entry
                job.emit(Delta(tail, ()))
            self._finish(s, FinishReason.STOP)
            return None
        job.generated += 1
        if job.generated == job.min_tokens:
            job.sampler.allow_eog()
        self._generated_total += 1
        self._generated_times.append(now)
        text = job.text.feed(self.model.text_piece(token))
        if job.text.stopped is not None:
            if text or logprobs:
                job.emit(Delta(text, logprobs))
            self._finish(s, FinishReason.STOP)
            return None
        if job.generated >= job.max_tokens or len(s.cached) + 1 >= self.n_ctx_slot:
            text += job.text.flush()
            if text or logprobs:
                job.emit(Delta(text, logprobs))
            self._finish(s, FinishReason.LENGTH)
            return None
        if text or logprobs:
            job.emit(Delta(text, logprobs))
        job.next_token = token
        return token

    def _finish(self, s: Slot, reason: FinishReason, error: str = "") -> None:
        job = s.job
        if job is None:
            return
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        s.job = None
        s.last_used = time.monotonic()
        if self._cache is not None:
            self._unsaved.add(s.seq)
        stopped = job.text.stopped if job.text is not None else None
        job.emit(Finished(reason, len(job.prompt), job.reused, job.generated, error, stopped))
