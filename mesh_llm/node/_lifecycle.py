"""The node: one asyncio runtime that wires models, backends, the API and the console together.

`Node` composes a few components that each own their state (`_local.LocalServing`,
`_placement.Placement`, `_membership.Membership`, `_front.Front`), derives the routing table
whenever one of them changes (`routing.derive_table`), and runs the ordered start and stop
(see `run`). The node owns the signals and every child process it starts, and stops exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mesh_llm.api.console import ChangeFeed, console_policy, create_console_app, status_for_caller
from mesh_llm.api.control import control_router
from mesh_llm.api.guard import AccessPolicy, allowed_hosts, guarded
from mesh_llm.api.prefix import ADVERTISED
from mesh_llm.api.proxy import Proxy
from mesh_llm.config import NodeConfig
from mesh_llm.errors import MeshError, ModelError
from mesh_llm.mesh.gossip import ModelAd
from mesh_llm.mesh.service import MeshService
from mesh_llm.node._front import Front
from mesh_llm.node._http import HttpServers, bind_tcp
from mesh_llm.node._local import LocalServing
from mesh_llm.node._membership import Membership
from mesh_llm.node._placement import Placement
from mesh_llm.node._resources import NodeResources
from mesh_llm.node._snapshot import NodeStatus
from mesh_llm.node._stop_watch import StopWatch, bounded_step, kill_children
from mesh_llm.node.routing import RoutingInputs, RoutingTable, derive_table
from mesh_llm.runtime import RuntimeFile
from mesh_llm.serving.model_server import BackendState
from mesh_llm.split.claims import intents_record
from mesh_llm.supervise import all_logged, cancel_and_wait, spawn_supervised

log = logging.getLogger(__name__)


class Node:
    """A mesh-llm node. `await Node(config, load_resources(config)).run()` serves until stopped."""

    def __init__(
        self,
        config: NodeConfig,
        resources: NodeResources,
        *,
        on_ready: Callable[[Node], None] | None = None,
        stop_watch: StopWatch | None = None,
    ) -> None:
        self.config = config
        self.node_id = resources.identity.node_id
        self.capacity = resources.capacity
        self.started_at = time.time()
        self.feed = ChangeFeed()
        self.api_port: int | None = None
        self.console_port: int | None = None
        self.stopping = False
        self.fatal: MeshError | None = None  # why the node stopped by itself (run() returns 1)
        self.serving = LocalServing(config, self.node_id, self.capacity, self.changed)
        self.placement = Placement(
            config, self.node_id, self.capacity, self.serving, lambda: self.membership.mesh, self.changed
        )
        self.membership = Membership(
            config, resources.identity, self.capacity, self.placement,
            record=self._record_fields, table=lambda: self.front.table, stopping=lambda: self.stopping,
            changed=self.changed, mesh_changed=self._mesh_changed, discovery_changed=self.feed.bump,
        )  # fmt: skip
        self.front = Front(self.placement, self.membership, self.feed, self.refresh)
        self.status_view = NodeStatus(self)
        self.proxy: Proxy | None = None
        self.refresh()
        self._on_ready = on_ready
        self._http = HttpServers()
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()  # set when the mesh changed; wakes the advertise loop early
        self._engines_shown: object = None  # what the page last got of the local engines' slots
        self._grace_s = config.timing.stop_grace_s
        # The process's watchdog (the CLI's); without one, a stuck stop is only logged by step.
        self._stop_watch = stop_watch or StopWatch(None)
        self.runtime = RuntimeFile(config.state_dir)

    @property
    def mesh(self) -> MeshService | None:
        """The mesh service of the mesh this node is in; None outside one."""
        return self.membership.mesh

    @property
    def table(self) -> RoutingTable:
        """Where each model is served, as of the last change (read it; never derive it here)."""
        return self.front.table

    def status(self) -> dict[str, Any]:
        return self.status_view.status()

    # ---- the routing table and what the node advertises ----------------------------------

    def refresh(self) -> None:
        """Derive the routing table from the mesh view and local serving state, as they are now."""
        now = time.monotonic()
        demand, serving = self.placement.demand, self.serving
        servers = serving.servers
        self.front.table = derive_table(
            RoutingInputs(
                node_id=self.node_id,
                now=now,
                local=tuple(self.placement.local_endpoints(self.front.in_flight)),
                servers=frozenset(servers),
                slotted=frozenset(n for n, s in servers.items() if s.free_slots is not None),
                peers=self.mesh.peers() if self.mesh is not None else {},
                suspects=self.mesh.transport.suspects() if self.mesh is not None else frozenset(),
                wants=tuple(self.placement.split.wants),
                declined=frozenset(serving.declined),
                standbys=self.placement.standbys(),
                rates=demand.rates(now),
                recent=demand.recent(now),
                sizes=self.placement.model_sizes(),
                demand=self.config.demand,
                known=self.front.table.known,
                known_memory_s=self.config.timing.known_model_memory_s,
                started_at=self.started_at,
                n_parallel=self.config.backend.n_parallel,
                prefixes=self.front.prefixes.held(),
            )
        )

    def changed(self) -> None:
        """Something this node serves or publishes changed: new table, tell the page, re-advertise."""
        self.refresh()
        self.feed.bump()
        if self.mesh is not None:
            self.mesh.advertise(**self._record_fields())

    def _mesh_changed(self) -> None:
        """A peer joined, left or changed its record: new table, tell the page, re-plan splits soon."""
        self.refresh()
        self.feed.bump()
        self._poke.set()

    @property
    def state(self) -> str:
        serving, split = self.serving, self.placement.split
        if self.stopping:
            return "stopping"
        if self.config.idle:
            return "idle"
        if self.config.client:
            return "client"
        if not serving.servers and not serving.pending and not split.hosts:
            if split.duties:
                return "worker"
            return "waiting" if split.wants else "standby"
        if any(not h.server for h in split.hosts.values()):
            return "waiting"
        states = [s.status().state for s in serving.servers.values()]
        if serving.pending or any(s is BackendState.STARTING for s in states) or not states:
            return "starting"
        if all(s is BackendState.READY for s in states):
            return "serving"
        return "degraded"

    @property
    def role(self) -> str:
        return self.placement.role

    def _record_fields(self) -> dict[str, Any]:
        """What this node advertises; health follows the model servers' live checks."""
        split, serving, in_flight = self.placement.split, self.serving, self.front.in_flight
        held = self.front.prefixes.held()  # what this node's own servers got from its own API
        models = tuple(
            ModelAd(
                name, server.ready, "host", in_flight=in_flight[name], layers=split.host_layers(name),
                free_slots=server.free_slots, prefixes=held.get((name, self.node_id), ())[:ADVERTISED],
            )
            for name, server in sorted(serving.servers.items())
        ) + tuple(split.worker_ads())  # fmt: skip
        picking_up = self.placement.standby.state.model
        if picking_up is not None and picking_up not in serving.servers:
            # Resolving (perhaps assembling or downloading) before its server starts: say so, or
            # the mesh would see the model unserved and this node no longer a standby.
            models += (ModelAd(picking_up, False, "host"),)
        return {
            "role": self.role,
            "capacity_bytes": self.capacity.offered_bytes,
            "models": models,
            "on_disk": tuple(sorted(set(serving.on_disk) | set(serving.resolved))),
            "api_port": self.api_port or 0,
            "console_port": self.console_port or 0,
            "demand": self.placement.demand.own_counters(),
            "client": self.config.client,
            "extra": intents_record(split.claims(), split.wants, serving.declined),
        }

    # ---- start and stop ------------------------------------------------------------------

    def request_stop(self, sig: int | None = None) -> None:
        """Begin an orderly shutdown (the signal handlers call this).

        Ctrl-C (SIGINT) ends answers in progress at once; SIGTERM (and a call without a
        signal) lets them finish for up to `timing.stop_grace_s`. Either way a stream still running is
        ended with an SSE error event and ``[DONE]``. A second request exits at once.
        """
        if self._stop.is_set():
            log.warning("second stop request: exiting without waiting (children killed)")
            kill_children()
            os._exit(130)
        self._stop_watch.start()
        self._grace_s = 0.0 if sig == signal.SIGINT else self.config.timing.stop_grace_s
        name = signal.Signals(sig).name if sig is not None else "request"
        log.info(
            "stopping (%s)%s", name,
            "; press Ctrl-C again to exit at once" if sig == signal.SIGINT else "",
        )  # fmt: skip
        self._stop.set()

    async def _start_http(self) -> None:
        if self.config.console is not None:
            sock = bind_tcp(self.config.console, "console")
            self.console_port = sock.getsockname()[1]
            app = create_console_app(
                self.status, self.feed, api_key=self.config.api_key, metrics=self.status_view.metrics_text
            )
            app.include_router(
                control_router(self.placement.drop, self.placement.split.preview, self.config.api_key)
            )
            await self._http.serve(guarded(app, console_policy(self.config.api_key, self._hosts())), sock, 1)
        if not self.config.idle:
            sock = bind_tcp(self.config.api, "API")
            self.api_port = sock.getsockname()[1]
            self.proxy = Proxy(
                self.front,
                api_key=self.config.api_key,
                request_timeout_s=self.config.backend.request_timeout_s,
                first_content_s=self.config.backend.first_content_s,
                max_body_bytes=self.config.backend.max_body_bytes,
                gauges=self.status_view.gauges,
                status=lambda request: status_for_caller(
                    self.status(), request.client.host if request.client else "", self.config.api_key
                ),
            )
            # The proxy checks the key itself (OpenAI-shaped 401s); the guard checks the Host.
            policy = AccessPolicy(None, self._hosts(), json_only=False, max_body=None)
            # uvicorn's own deadline comes after the proxy's drain (grace, then ending answers).
            await self._http.serve(
                guarded(self.proxy.app, policy), sock, graceful_s=int(self.config.timing.stop_grace_s) + 5
            )

    def _hosts(self) -> frozenset[str]:
        """Host names the API and console answer for (DNS rebinding defence)."""
        bound = [c.host for c in (self.config.api, self.config.console) if c is not None]
        return allowed_hosts(bound, self.config.allow_hosts)

    async def run(self) -> int:
        """Start in order, serve until a stop request, then shut down in order. Returns an exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        advertiser: asyncio.Task[None] | None = None
        discovering: asyncio.Task[None] | None = None
        try:
            await self._start_http()
            self.runtime.write(
                node_id=self.node_id, api_port=self.api_port, console_port=self.console_port,
                api_host=self.config.api.host,
            )  # fmt: skip
            if not self.config.idle and not self.config.discovery.finds:
                await self.membership.start_mesh()  # with --auto / --mesh-name, discovery picks the mesh
            advertiser = spawn_supervised("advertise", self._advertise_loop)
            if self._on_ready is not None:
                self._on_ready(self)
            if self.config.discovery.active:
                # In the background: the API and console are already up and stay up.
                discovering = spawn_supervised("discovery", self.membership.start_discovery().run)
            await self._start_models()
            await self._stop.wait()
        finally:
            self._stop_watch.start()  # also when the node stops by itself
            if discovering is not None:
                await self._step("discovery's last round", cancel_and_wait(discovering, log))
            discovery = self.membership.discovery
            if discovery is not None:  # take the listing down before leaving the mesh
                await self._step("delisting the mesh", discovery.stop(), extra_s=discovery.stop_s)
            if advertiser is not None:
                advertiser.cancel()
            await self._shutdown()
            self.runtime.remove()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._stop_watch.step = "exiting (asyncio's cleanup, the interpreter's exit)"
        return 1 if self.fatal is not None else 0

    async def _start_models(self) -> None:
        await self.serving.find_on_disk()
        for spec in self.config.models:
            await self.placement.serve(spec)
        self.feed.bump()
        failed = self.serving.pending.failures()
        if self.config.models and len(failed) == len(self.config.models):
            # Nothing the user asked for can run: say why and exit rather than serve nothing.
            self.fatal = ModelError(failed[0] if len(failed) == 1 else "; ".join(failed))
            self._stop.set()

    async def _step(self, what: str, work: Coroutine[Any, Any, object], extra_s: float = 0.0) -> None:
        """One step of the stop, bounded by `timing.stop_step_s` (plus `extra_s`)."""
        self._stop_watch.step = what
        await bounded_step(what, work, self.config.timing.stop_step_s + extra_s)

    async def _advertise_loop(self) -> None:
        """Every second, or soon after a peer's record changes: merge demand, reconcile, advertise.

        Reacting to changes matters for splits: a worker starts as soon as it sees the host's
        plan, and the host loads as soon as it sees the workers ready, instead of up to a second
        later at each step.
        """
        timing = self.config.timing
        last_eval = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timing.advertise_interval_s)
                await asyncio.sleep(timing.react_delay_s)
            self._poke.clear()
            engines = self._engine_marks()
            if engines != self._engines_shown:  # e.g. a prefill's progress: push it to the page
                self._engines_shown = engines
                self.feed.bump()
            if self.mesh is None:
                continue
            now = time.monotonic()
            peers = self.mesh.peers()
            for node_id, view in peers.items():
                self.placement.demand.merge(
                    node_id, view.record.demand, now, generation=view.record.incarnation
                )
            await self.placement.split.reconcile()
            self.refresh()  # what only time changes: demand decays, known models expire
            self.mesh.advertise(**self._record_fields())
            if self.role == "standby" and not self.stopping and now - last_eval >= timing.standby_eval_s:
                last_eval = now
                await self.placement.pick_up_work(self.table)

    def _engine_marks(self) -> object:
        """What the console shows of each local engine's slots (polled from the model servers)."""
        keys = ("slots_busy", "queued", "tokens_per_s", "slots")
        servers = sorted(self.serving.servers.items())
        return [(name, [s.slots.get(k) for k in keys]) for name, s in servers if s.slots is not None]

    async def _shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish briefly, leave the mesh, stop children."""
        self.stopping = True
        self.feed.bump()
        self.placement.cancel_serving()
        started = self._http.started
        api = self._http.close(
            started[1:] if self.config.console is not None else started
        )  # no new connections
        if self.proxy is not None:
            await self._step("answers in progress", self._drain(self.proxy), extra_s=self._grace_s)
        await self._step("the API server", all_logged("the API server", api, log))
        await self._step("split models", self.placement.split.stop())
        if self.mesh is not None:
            await self._step("leaving the mesh", self.mesh.stop())
        await self._step("model servers", self.serving.stop())
        if self.proxy is not None:
            await self._step("the proxy's connections", self.proxy.aclose())
        self.feed.close()
        await self._step("the console", all_logged("the console", self._http.close(started), log))

    async def _drain(self, proxy: Proxy) -> None:
        cut = await proxy.drain(self._grace_s)
        if cut:
            log.info("ended %d answer(s) in progress: this node is stopping", cut)
