"""The workers' side of a split: RPC workers holding layer ranges for other nodes' hosts.

Which duties to hold is decided in `_election.py` (`wanted_duties`); this module starts and
stops the RPC workers, pre-filling their tensor cache from this node's own copy of the GGUF.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh_llm.errors import MeshError
from mesh_llm.mesh.gossip import ModelAd
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.planning.records import model_dir_name
from mesh_llm.serving.rpc.cache import clear_rpc_cache, prefill_rpc_cache
from mesh_llm.serving.rpc.supervisor import RpcWorker, RpcWorkerState
from mesh_llm.split._context import SplitContext
from mesh_llm.split._election import DutyAssignment

log = logging.getLogger(__name__)


@dataclass
class WorkerDuty:
    """This node's part of someone else's split: an RPC worker holding a layer range."""

    model: str
    host: str
    epoch: int
    layers: tuple[int, int]
    worker: RpcWorker
    cache_files: list[Path] = field(default_factory=list)

    @property
    def assignment(self) -> DutyAssignment:
        return DutyAssignment(self.host, self.epoch, self.layers)

    def ad(self) -> ModelAd:
        """What this duty advertises: hosts wait for it to be ready before loading."""
        return ModelAd(
            self.model,
            self.worker.state is RpcWorkerState.READY,
            "worker",
            layers=self.layers,
            extra={"epoch": self.epoch, "host": self.host},
        )


class WorkerExecutor:
    """Starts and stops the RPC workers of this node's duties."""

    def __init__(
        self,
        ctx: SplitContext,
        state_dir: Path,
        n_threads: int | None,
        own_copy: Callable[[str], Awaitable[ResolvedModel]],
    ) -> None:
        self._ctx = ctx
        self._state_dir = state_dir
        self._n_threads = n_threads
        self._own_copy = own_copy

    async def prepare(self, model: str, a: DutyAssignment) -> WorkerDuty:
        """Pre-fill the cache and build the RPC worker for `model`'s layers `a.layers` (`run` starts it)."""
        ctx = self._ctx
        # Named by a hash: a model name comes from a peer's gossip and never becomes a path.
        cache = self._state_dir / "rpc-cache" / model_dir_name(model)
        shutil.rmtree(cache, ignore_errors=True)
        cache_dir: Path | None = cache
        files: list[Path] = []
        try:
            path = (await self._own_copy(model)).path
            files = await asyncio.to_thread(prefill_rpc_cache, path, a.layers, cache)
        except MeshError as exc:
            log.info(
                "no local copy of %s to pre-fill the RPC cache (%s): weights will cross the network",
                model,
                exc,
            )
            cache_dir = None  # a cache dir without prefill would only fill the disk
        gpus = ctx.capacity.gpu_names
        worker = RpcWorker(
            cache_dir=cache_dir,
            log_dir=self._state_dir / "logs",
            name=f"rpc-{model}",
            n_threads=self._n_threads,
            on_change=ctx.split_changed,
            device=gpus[0] if gpus else "cpu",
        )
        duty = WorkerDuty(model, a.host, a.epoch, a.layers, worker, files)
        log.info(
            "worker for %s layers %d-%d of host %s (epoch %d)", model, a.layers[0], a.layers[1], a.host[:8], a.epoch
        )  # fmt: skip
        return duty

    async def run(self, duty: WorkerDuty) -> None:
        """Start the duty's RPC worker (after it is recorded, so its changes are seen)."""
        try:
            await duty.worker.start()
        except MeshError as exc:
            log.error("RPC worker for %s failed to start: %s", duty.model, exc)
        self._ctx.split_changed()

    async def stop(self, duty: WorkerDuty) -> None:
        await duty.worker.stop()
        if duty.worker.cache_dir is not None:
            clear_rpc_cache(duty.worker.cache_dir)


def rpc_port(duty: WorkerDuty | None, peer_id: str, header_epoch: object) -> int | None:
    """Where a host's RPC tunnel lands: the duty's worker for that host and epoch, else refuse."""
    if duty is None or duty.host != peer_id or duty.epoch != header_epoch:
        return None
    if duty.worker.state is not RpcWorkerState.READY:
        return None
    return duty.worker.port
