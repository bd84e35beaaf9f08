"""Serving: this node's model servers and the models asked of it, from resolving to stopping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mesh_llm.api.routing import Endpoint
from mesh_llm.config import NodeConfig
from mesh_llm.errors import MeshError
from mesh_llm.models.catalog import served_name
from mesh_llm.models.resolve import ResolvedModel, on_disk_names, resolve
from mesh_llm.models.states import Failed, PendingModels, PendingState, Resolving
from mesh_llm.serving.hardware import Capacity
from mesh_llm.serving.model_server import ModelServer
from mesh_llm.supervise import all_logged

log = logging.getLogger(__name__)


class LocalServing:
    """Owns the model servers this node runs and what it knows of the models asked of it.

    Every change it makes is reported through `changed`, once the change is in place.
    """

    def __init__(
        self, config: NodeConfig, node_id: str, capacity: Capacity, changed: Callable[[], None]
    ) -> None:
        self._config = config
        self._node_id = node_id
        self._capacity = capacity
        self._changed = changed
        self.servers: dict[str, ModelServer] = {}
        self.resolved: dict[str, ResolvedModel] = {}
        self.pending = PendingModels()  # models asked for with no model server yet: resolving, failed
        # --model value -> the name it will be served under: routing knows it from the first request
        self.asked = {spec: served_name(spec) for spec in config.models}
        self.declined: set[str] = set()  # models the user dropped here: never picked up again
        self.on_disk: tuple[str, ...] = ()

    def set_pending(self, spec: str, state: PendingState | None) -> None:
        """Move a model asked for to `state` (None: it has a server, or is no longer pending)."""
        self.pending.set(spec, state)
        self._changed()

    async def find_on_disk(self) -> None:
        """Look for the models this machine holds (the catalog's cache and `<state-dir>/models/`)."""
        self.on_disk = tuple(sorted({*await asyncio.to_thread(on_disk_names), *self.local_files()}))

    async def resolve(self, spec: str) -> ResolvedModel | None:
        """Find (downloading if allowed) the file of `spec`; None, with the reason kept, if not."""
        self.set_pending(spec, Resolving())
        try:
            model = await asyncio.to_thread(resolve, spec, allow_download=self._config.allow_download)
        except MeshError as exc:
            log.error("cannot serve %s: %s", spec, exc)
            self.set_pending(spec, Failed(f"cannot serve {spec}: {exc}"))
            return None
        self.pending.set(spec, None)
        return model

    async def start_server(self, model: ResolvedModel) -> None:
        """Start a model server for `model` (already resolved) and serve it."""
        server = ModelServer(
            model,
            self._config.backend,
            self._config.state_dir / "logs",
            on_change=self._changed,
            gpus=[(d.name, d.free_bytes) for d in self._capacity.devices],
        )
        self.servers[model.name] = server
        await server.start()
        self._changed()

    async def stop_server(self, name: str) -> None:
        await self.servers.pop(name).stop()

    async def stop(self) -> None:
        await all_logged("model servers", [s.stop() for s in self.servers.values()], log)

    def local_files(self) -> dict[str, Path]:
        """GGUF files offered from `<state-dir>/models/` (name = file stem), for splits and standbys."""
        folder = self._config.state_dir / "models"
        return {p.stem: p for p in sorted(folder.glob("*.gguf"))} if folder.is_dir() else {}

    def local_model_socket(self, model: str) -> Path | None:
        """Where a peer's HTTP tunnel for `model` lands: our ready model server's socket, else refuse."""
        server = self.servers.get(model)
        return server.socket_path if server is not None and server.ready else None

    def asked_not_started(self, listed: set[str]) -> list[Endpoint]:
        """The --model models with no model server yet: not ready (a 503), never unknown (a 404).

        From the moment the API port opens until each has a server, a split host or a failure.
        """
        out = []
        for spec, name in self.asked.items():
            state = self.pending.get(spec)
            if name in listed or name in self.declined or isinstance(state, Failed):
                continue
            listed.add(name)
            out.append(
                Endpoint(name, self._node_id, False, local=True, state=state.text if state else "starting")
            )
        return out

    def server_endpoints(self, in_flight: dict[str, int]) -> list[Endpoint]:
        """One endpoint per model server, with its load as the API counts it."""
        out = []
        for name, server in self.servers.items():
            load = in_flight.get(name, 0)
            out.append(
                Endpoint(
                    model=name,
                    node_id=self._node_id,
                    ready=server.ready,
                    in_flight=load,
                    local=True,
                    free_slots=None
                    if server.free_slots is None
                    else max(0, self._config.backend.n_parallel - load),
                    state=server.status().state.value,
                )
            )
        return out
