"""Serving models on this node: the ones asked for, the ones a standby picks up, dropping one."""

from __future__ import annotations

import asyncio
import logging

from mesh_llm.api.routing import model_key
from mesh_llm.errors import MeshError, ModelError
from mesh_llm.models.resolve import on_disk_names, resolve
from mesh_llm.node._serving import NodeServingView
from mesh_llm.planning.demand import choose_standby_work
from mesh_llm.serving.backend import ModelServer
from mesh_llm.states import Failed, PickingUp, Resolving, StandbyIdle

log = logging.getLogger(__name__)


class NodeModels(NodeServingView):
    """Serving the models asked for, dropping them, and a standby picking up work."""

    async def _start_models(self) -> None:
        self.on_disk = tuple(sorted({*await asyncio.to_thread(on_disk_names), *self.local_files()}))
        for spec in self.config.models:
            await self._serve(spec)
        self.feed.bump()
        failed = self.pending.failures()
        if self.config.models and len(failed) == len(self.config.models):
            # Nothing the user asked for can run: say why and exit rather than serve nothing.
            self.fatal = ModelError(failed[0] if len(failed) == 1 else "; ".join(failed))
            self._stop.set()

    async def _serve(self, spec: str) -> None:
        """Resolve (downloading if allowed) and start one model server."""
        self.pending.set(spec, Resolving())
        self._changed()
        try:
            model = await asyncio.to_thread(resolve, spec, allow_download=self.config.allow_download)
        except MeshError as exc:
            self.pending.set(spec, Failed(f"cannot serve {spec}: {exc}"))
            log.error("cannot serve %s: %s", spec, exc)
            self._changed()
            return
        self.pending.set(spec, None)
        if model.name in self.servers or model.name in self.split.hosts:
            log.warning("%s given twice; serving it once", model.name)
            return
        self.resolved[model.name] = model
        if self.mesh is not None and self.split.wants_split(model):
            log.info("%s (%.1f GB) needs the mesh: electing its host", model.name, model.size_bytes / 1e9)
            self.split.want(model)
            self.declined.discard(model.name)
            await self.split.reconcile()
            self._changed()
            return
        server = ModelServer(
            model,
            self.config.backend,
            self.config.state_dir / "logs",
            on_change=self._changed,
            gpus=[(d.name, d.free_bytes) for d in self.capacity.devices],
        )
        self.servers[model.name] = server
        await server.start()
        self._changed()

    def _spawn_serve(self, name: str) -> None:
        task = asyncio.create_task(self._serve(name), name=f"serve-{name}")
        self._serving_tasks.add(task)
        task.add_done_callback(self._serving_tasks.discard)

    async def _maybe_pick_up_work(self, now: float) -> None:
        """A standby takes the model the mesh-wide rules give it (identically computed everywhere)."""
        decision = choose_standby_work(
            self.node_id, self._standbys(), self._served_map(), self.demand.rates(now), self._model_sizes(),
            recent=self.demand.recent(now), config=self.config.demand,
        )  # fmt: skip
        if decision is None or decision.model in self.declined:  # declined ones are never assigned
            return
        log.info(
            "standby picks up %s (%s, %.1f requests/min mesh-wide%s)",
            decision.model, decision.reason.value, decision.rate_rpm, ", downloading" if decision.download else "",
        )  # fmt: skip
        self.standby.set(PickingUp(decision.model))
        try:
            await self._serve(decision.model)
        finally:
            self.standby.set(StandbyIdle())
            self._changed()

    async def drop(self, model: str) -> bool:
        """Stop serving `model` here (the user asked); the mesh re-plans without this node."""
        split_names = {*self.split.hosts, *self.split.wants, *self.split.duties}
        name = next((n for n in [*self.servers, *split_names] if model_key(n) == model_key(model)), None)
        if name is None:
            return False
        self.declined.add(name)
        if name in split_names:
            await self.split.drop(name)
        else:
            await self.servers.pop(name).stop()
        log.info("dropped %s at the user's request", name)
        self._changed()
        return True
