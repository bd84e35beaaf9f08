"""The node: one asyncio runtime that wires models, backends, the API and the console together.

Startup and shutdown are explicit ordered phases (see `run`). The node owns the signals and
every child process it starts, and stops exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from mesh_llm import __version__
from mesh_llm.api.console import ChangeFeed, console_policy, create_console_app, status_for_caller
from mesh_llm.api.control import control_router
from mesh_llm.api.guard import AccessPolicy, allowed_hosts, guarded
from mesh_llm.api.limits import limited_protocol
from mesh_llm.api.proxy import Proxy
from mesh_llm.api.routing import Endpoint, model_key
from mesh_llm.api.upstream import Upstream
from mesh_llm.config import HttpConfig, NodeConfig
from mesh_llm.discovery import Discovery, MeshFacts, pick_model
from mesh_llm.errors import BackendUnavailable, ConfigError, MeshError, ModelError
from mesh_llm.mesh.gossip import GossipConfig, ModelAd, PeerStatus
from mesh_llm.mesh.http_transport import BASE_URL
from mesh_llm.mesh.service import MeshService, MeshSettings, record_for
from mesh_llm.mesh.state_dir import load_identity, load_or_create_credentials
from mesh_llm.mesh.token import InviteToken, MeshCredentials, decode_tokens, new_mesh
from mesh_llm.metrics import Gauge
from mesh_llm.models.catalog import CATALOG, find_entry
from mesh_llm.models.resolve import ResolvedModel, on_disk_names, resolve
from mesh_llm.planning.demand import DemandTable, StandbyInfo, assign_standby_work, choose_standby_work
from mesh_llm.planning.plans import Split
from mesh_llm.planning.records import peer_claims
from mesh_llm.runtime import RuntimeFile
from mesh_llm.serving.backend import BackendState, ModelServer
from mesh_llm.serving.hardware import Capacity, detect_capacity
from mesh_llm.split import FIT_FACTOR, SplitManager
from mesh_llm.states import Failed, PendingModels, Resolving
from mesh_llm.status import (
    DemandSnapshot,
    Duty,
    LocalModel,
    MeshSnapshot,
    PeerSnapshot,
    StatusSnapshot,
    WaitingSplit,
    build_status,
)
from mesh_llm.supervise import spawn_supervised
from mesh_llm.transport import TransportConfig

log = logging.getLogger(__name__)

KNOWN_MODEL_MEMORY_S = 600.0  # a model seen in the mesh this recently answers 503, not 404
ADVERTISE_INTERVAL_S = 1.0
REACT_DELAY_S = 0.1  # after a peer's record changed, reconcile this soon (bursts coalesce; at most 10 Hz)
# How often a standby looks for work: each pass of the advertise loop (a second, or just after a
# peer's record changed), so a model that lost its last server is picked up within seconds.
STANDBY_EVAL_S = 0.5
STOP_GRACE_S = 5.0  # how long SIGTERM lets answers in progress finish before ending them


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the node."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_tcp(http: HttpConfig, what: str) -> socket.socket:
    """Bind a listening socket up front so a busy port is a clear error, not a uvicorn exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY; without it a response's header and body writes
    # meet delayed ACKs and each request waits about 40 ms on loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((http.host, http.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {http.host}:{http.port} for the {what} ({exc.strerror}); "
            f"is another mesh-llm running? Pick another port with --{'port' if what == 'API' else 'console'}."
        ) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Node:
    """A mesh-llm node. `await Node(config).run()` serves until stopped."""

    def __init__(self, config: NodeConfig, *, on_ready: Callable[[Node], None] | None = None) -> None:
        self.config = config
        self.tokens = decode_tokens(config.join)
        self.identity = load_identity(config.state_dir)
        self.node_id = self.identity.node_id
        self.mesh: MeshService | None = None
        self.known_models: dict[str, float] = {}  # model -> when last seen served in the mesh
        self.started_at = time.time()
        self.feed = ChangeFeed()
        self.servers: dict[str, ModelServer] = {}
        self.resolved: dict[str, ResolvedModel] = {}
        self.pending = PendingModels()  # models asked for with no model server yet: resolving, failed
        self.capacity: Capacity = detect_capacity(
            config.max_vram_bytes, client=config.client, device=config.device
        )
        self.in_flight: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.routed: Counter[tuple[str, str]] = Counter()  # (model, host node id) -> requests sent there
        self.demand = DemandTable(self.node_id)
        self.declined: set[str] = set()  # models the user dropped here: never picked up again
        self.on_disk: tuple[str, ...] = ()
        self.standby_state = "idle"
        self.picking_up: str | None = None  # the model this standby is taking on, until it serves
        self.split = SplitManager(self)
        self.api_port: int | None = None
        self.console_port: int | None = None
        self.stopping = False
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()  # set when the mesh changed; wakes the advertise loop early
        self._on_ready = on_ready
        self._http: list[tuple[_EmbeddedServer, asyncio.Task[None]]] = []  # console first, then API
        self._proxy: Proxy | None = None
        self._grace_s = STOP_GRACE_S
        self.runtime = RuntimeFile(config.state_dir)
        self.fatal: MeshError | None = None  # why the node stopped by itself (run() returns 1)
        self.discovery: Discovery | None = None
        self._serving_tasks: set[asyncio.Task[None]] = set()
        self._own_mesh: MeshCredentials | None = None  # the mesh --auto started, kept for a return

    # ---- ServingView, used by the proxy -------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        out = []
        for name, server in self.servers.items():
            out.append(
                Endpoint(
                    model=name,
                    node_id=self.node_id,
                    ready=server.ready,
                    in_flight=self.in_flight[name],
                    local=True,
                    free_slots=self._local_free_slots(server),
                    state=server.status().state.value,
                )
            )
        for name, split_host in self.split.hosts.items():
            if name not in self.servers:
                out.append(Endpoint(name, self.node_id, False, local=True, state=split_host.state.text))
        if self.mesh is not None:
            for node_id, view in sorted(self.mesh.peers().items()):
                for ad in view.record.models:
                    if ad.role != "host":
                        continue  # split workers hold layers; only hosts take HTTP traffic
                    ready = ad.ready and view.connected and view.status is PeerStatus.ALIVE
                    state = "ready" if ready else ("loading" if not ad.ready else "unreachable")
                    out.append(
                        Endpoint(
                            ad.name,
                            node_id,
                            ready,
                            ad.in_flight,
                            local=False,
                            state=state,
                            free_slots=ad.free_slots,
                        )
                    )
                hosted = {ad.name for ad in view.record.models if ad.role == "host"}
                for name, claim in peer_claims(view.record.extra).items():
                    if name not in hosted:  # a split still being placed there: say what it waits for
                        out.append(
                            Endpoint(name, node_id, False, local=False, state=claim.state or claim.mode)
                        )
        for name in self.split.wants:
            if not any(e.model == name for e in out):
                out.append(Endpoint(name, "", False, state="electing a host for it in the mesh"))
        now = time.monotonic()
        for e in out:
            self.known_models[e.model] = now
        served = {e.model for e in out}
        wanted = set(self.demand.wanted({m: [m] for m in served}, now)) | self.demand.recent(now)
        if wanted - served:
            taker = self._standby_assignment({m: [m] for m in served}, now)
            for model in sorted(wanted - served):
                if model in taker:
                    served.add(model)
                    self.known_models[model] = now
                    state = f"standby node {taker[model][:8]} is about to load it"
                    out.append(Endpoint(model, "", False, state=state))
        for model, seen in list(self.known_models.items()):
            if now - seen > KNOWN_MODEL_MEMORY_S:
                del self.known_models[model]
            elif model not in served:
                # Fail clearly rather than with a 404: the model was here and may come back.
                out.append(Endpoint(model, "", False, state=self._unserved_reason(model)))
        return out

    def _standby_assignment(self, served: dict[str, list[str]], now: float) -> dict[str, str]:
        """Model -> the standby the mesh-wide rules give it now (what every node computes)."""
        decisions = assign_standby_work(
            self._standbys(), served, self.demand.rates(now), self._model_sizes(),
            recent=self.demand.recent(now),
        )  # fmt: skip
        return {d.model: node_id for node_id, d in decisions.items()}

    def _unserved_reason(self, model: str) -> str:
        """What is happening to a known model nobody serves, and what the user can do."""
        decliners = sorted(
            [self.node_id[:8]] * (model in self.declined)
            + [
                node_id[:8]
                for node_id, view in (self.mesh.peers().items() if self.mesh is not None else ())
                if model in _declined(view.record.extra)
            ]
        )
        why = "no node in the mesh serves it right now and no standby node can take it"
        if decliners:
            why += f" (dropped with `mesh-llm drop` on {', '.join(decliners)})"
        return f"offline: {why}; start a node with `mesh-llm --model {model} --join <token>` to serve it"

    def model_cards(self) -> list[dict[str, Any]]:
        by_model: dict[str, list[Endpoint]] = {}
        for e in self.endpoints():
            if e.node_id:
                by_model.setdefault(e.model, []).append(e)
        return [
            {
                "id": model,
                "object": "model",
                "created": int(self.started_at),
                "owned_by": "mesh-llm",
                "ready": any(e.ready for e in eps),
                "hosts": sorted(e.node_id[:8] for e in eps),
            }
            for model, eps in sorted(by_model.items())
        ]

    async def upstream(self, endpoint: Endpoint) -> Upstream:
        self.routed[(endpoint.model, endpoint.node_id)] += 1
        if endpoint.local:
            server = self.servers.get(endpoint.model)
            if server is None or not server.ready:
                raise BackendUnavailable(f"the model server of {endpoint.model} is not ready")
            return Upstream(server.base_url)
        if self.mesh is None:
            raise BackendUnavailable("this node is not in a mesh")
        return Upstream(BASE_URL, await self.mesh.http_transport(endpoint.node_id, endpoint.model))

    def local_model_port(self, model: str) -> int | None:
        """Where a peer's HTTP tunnel for `model` lands: our ready model server, else refuse."""
        server = self.servers.get(model)
        return server.port if server is not None and server.ready else None

    def note_request(self, model: str) -> None:
        """Count demand for a model the mesh knows or could load, served or not (wanted)."""
        name = self._canonical(model)
        if name is not None:
            self.demand.record(name, time.monotonic())

    def _canonical(self, model: str) -> str | None:
        key = model_key(model)
        names = set(self.servers) | set(self.known_models) | set(self.on_disk)
        if self.mesh is not None:
            for view in self.mesh.peers().values():
                names.update(ad.name for ad in view.record.models)
                names.update(view.record.on_disk)
        for name in names:
            if model_key(name) == key:
                return name
        entry = find_entry(model)
        return entry.name if entry is not None else None

    def _standbys(self) -> list[StandbyInfo]:
        out = []
        if self.role == "standby":
            out.append(
                StandbyInfo(
                    self.node_id,
                    self.capacity.offered_bytes,
                    frozenset(self.on_disk),
                    self.config.allow_download,
                    declined=frozenset(self.declined),
                )
            )
        if self.mesh is not None:
            for node_id, view in self.mesh.peers().items():
                rec = view.record
                if rec.role == "standby" and not rec.client:
                    out.append(
                        StandbyInfo(
                            node_id, rec.capacity_bytes, frozenset(rec.on_disk), True,
                            declined=_declined(rec.extra),
                        )
                    )  # fmt: skip
        return out

    def _local_free_slots(self, server: ModelServer) -> int | None:
        """Free slots now: the engine's count at its last check, less requests sent since."""
        if server.free_slots is None:
            return None
        return max(0, self.config.backend.n_parallel - self.in_flight[server.name])

    def _served_map(self) -> dict[str, list[str]]:
        served: dict[str, list[str]] = {}
        for e in self.endpoints():
            if e.node_id:
                served.setdefault(e.model, []).append(e.node_id)
        return served

    def _model_sizes(self) -> dict[str, int]:
        sizes = {e.name: e.size_bytes for e in CATALOG}
        sizes.update({name: m.size_bytes for name, m in self.resolved.items()})
        return sizes

    def begin_request(self, model: str) -> Callable[[], None]:
        self.in_flight[model] += 1
        self.requests[model] += 1
        self.feed.bump()
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight[model] -= 1
                self.feed.bump()

        return finish

    def mesh_problem(self) -> str | None:
        if self.mesh is None or not self.tokens or self.mesh.peers():
            return None
        return self.mesh.join_problem or "still dialling the inviter of its --join token"

    # ---- status ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.config.idle:
            return "idle"
        if self.config.client:
            return "client"
        if not self.servers and not self.pending and not self.split.hosts:
            if self.split.duties:
                return "worker"
            return "waiting" if self.split.wants else "standby"
        if any(not h.server for h in self.split.hosts.values()):
            return "waiting"
        states = [s.status().state for s in self.servers.values()]
        if self.pending or any(s is BackendState.STARTING for s in states) or not states:
            return "starting"
        if all(s is BackendState.READY for s in states):
            return "serving"
        return "degraded"

    @property
    def role(self) -> str:
        if self.config.client:
            return "client"
        if self.config.idle:
            return "idle"
        if self.servers or self.pending or self.split.hosts:
            return "host"
        # A node whose model another node coordinates is that model's prospective worker.
        return "worker" if self.split.duties or self.split.wants else "standby"

    def status(self) -> dict[str, Any]:
        """The node's status as JSON-able data (served at /api/status and streamed on /api/events)."""
        return build_status(self.status_snapshot())

    def status_snapshot(self) -> StatusSnapshot:
        """What status shows, frozen at this instant: the one place status reads the node."""
        split_rows = self.split.host_rows()
        models = tuple(
            LocalModel(
                name, server.status(), str(server.model.path), server.model.size_bytes,
                self.in_flight[name], self.requests[name], server.slots, server.draft,
                server.draft_error, server.load_s, split_rows.pop(name, None),
            )
            for name, server in self.servers.items()
        )  # fmt: skip
        waiting = tuple(
            WaitingSplit(
                name, self.split.hosts[name].state.text, str(self.split.hosts[name].model.path),
                self.split.hosts[name].model.size_bytes, self.requests[name], extra,
            )
            for name, extra in split_rows.items()
        )  # fmt: skip
        mono = time.monotonic()
        served = self._served_map()
        rates = self.demand.rates(mono)
        demand = DemandSnapshot(
            rates, {m: self.demand.total(m) for m in set(rates) | set(served)}, served,
            self.demand.config.wanted_min_rpm,
        )  # fmt: skip
        mesh = None
        if self.mesh is not None:
            peers = tuple(
                PeerSnapshot(
                    node_id, view, self.mesh.rtt_ms(node_id), self.mesh.rtt_min_ms(node_id),
                    {m: n for (m, host), n in self.routed.items() if host == node_id},
                )
                for node_id, view in self.mesh.peers().items()
            )  # fmt: skip
            rpc = self.mesh.rpc_counters
            mesh = MeshSnapshot(
                self.mesh.invite_token, self.mesh.credentials.mesh_id_hex, self.mesh.transport.port,
                self.mesh.transport.engine, peers,
                rpc.bytes_from_peer if rpc is not None else None, rpc.bytes_to_peer if rpc is not None else None,
            )  # fmt: skip
        duties = tuple(
            Duty(d.model, d.host, d.epoch, d.layers, d.worker.state.value, d.worker.port, len(d.cache_files))
            for d in self.split.duties.values()
        )
        return StatusSnapshot(
            node_id=self.node_id,
            started_at=self.started_at,
            now=time.time(),
            monotonic=mono,
            state=self.state,
            role=self.role,
            client=self.config.client,
            api_host=self.config.api.host,
            api_port=self.api_port,
            api_auth=self.config.api_key is not None,
            console_port=self.console_port,
            capacity=self.capacity,
            models=models,
            waiting_splits=waiting,
            pending=tuple(self.pending.items()),
            mesh=mesh,
            demand=demand,
            standby=self.standby_state,
            declined=tuple(self.declined),
            duties=duties,
            in_flight=sum(self.in_flight.values()),
            requests_total=sum(self.requests.values()),
            discovery=self.discovery.status() if self.discovery is not None else None,
        )

    # ---- metrics -----------------------------------------------------------------------

    def metrics_text(self) -> str:
        """The `/metrics` page (Prometheus text format)."""
        from mesh_llm.metrics import RequestMetrics, render

        return render(self._proxy.metrics if self._proxy else RequestMetrics(), self.gauges())

    def gauges(self) -> list[Gauge]:
        """What `/metrics` reads at scrape time: slots, queue, in-flight requests, peers, RTT."""
        info = Gauge(
            "mesh_llm_node_info", "This node (always 1).",
            [({"node_id": self.node_id, "version": __version__, "role": self.role, "state": self.state}, 1)],
        )  # fmt: skip
        in_flight = Gauge(
            "mesh_llm_in_flight_requests", "Requests this node's API is answering now, by model.",
            [({"model": m}, n) for m, n in sorted(self.in_flight.items())],
        )  # fmt: skip
        slots: list[tuple[dict[str, str], float]] = []
        queued: list[tuple[dict[str, str], float]] = []
        for name, server in sorted(self.servers.items()):
            if server.slots is None or not server.ready:
                continue
            for state in ("busy", "free"):
                slots.append(({"model": name, "state": state}, float(server.slots.get(f"slots_{state}", 0))))
            queued.append(({"model": name}, float(server.slots.get("queued", 0))))
        peers: Counter[str] = Counter()
        rtts: list[tuple[dict[str, str], float]] = []
        if self.mesh is not None:
            for node_id, view in sorted(self.mesh.peers().items()):
                peers[view.status.value if view.connected else "relayed"] += 1
                rtt = self.mesh.rtt_ms(node_id)
                if rtt is not None:
                    rtts.append(({"peer": node_id[:8]}, rtt / 1000))
        return [
            info,
            in_flight,
            Gauge("mesh_llm_slots", "Request slots of this node's model servers, busy or free.", slots),
            Gauge("mesh_llm_queued_requests", "Requests waiting for a free slot, by model.", queued),
            Gauge(
                "mesh_llm_peers", "Peers this node sees, by liveness.",
                [({"state": s}, float(peers.get(s, 0))) for s in ("alive", "suspect", "relayed")],
            ),
            Gauge("mesh_llm_peer_rtt_seconds", "Smoothed round-trip time to each linked peer.", rtts),
        ]  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------

    def request_stop(self, sig: int | None = None) -> None:
        """Begin an orderly shutdown (the signal handlers call this).

        Ctrl-C (SIGINT) ends answers in progress at once; SIGTERM (and a call without a
        signal) lets them finish for up to STOP_GRACE_S. Either way a stream still running is
        ended with an SSE error event and ``[DONE]``. A second request exits at once.
        """
        if self._stop.is_set():
            log.warning("second stop request: exiting without waiting")
            os._exit(130)
        self._grace_s = 0.0 if sig == signal.SIGINT else STOP_GRACE_S
        name = signal.Signals(sig).name if sig is not None else "request"
        log.info(
            "stopping (%s)%s", name,
            "; press Ctrl-C again to exit at once" if sig == signal.SIGINT else "",
        )  # fmt: skip
        self._stop.set()

    async def _serve_http(self, app: Any, sock: socket.socket, graceful_s: int) -> _EmbeddedServer:
        # No WebSockets: nothing here speaks them, and an upgraded connection would leave the
        # per-client connection count and the guard behind.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=graceful_s, access_log=False,
            ws="none",
        )  # fmt: skip
        config.load()
        config.http_protocol_class = limited_protocol(config.http_protocol_class)
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._http.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise MeshError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        return server

    async def _start_http(self) -> None:
        if self.config.console is not None:
            sock = bind_tcp(self.config.console, "console")
            self.console_port = sock.getsockname()[1]
            app = create_console_app(
                self.status, self.feed, api_key=self.config.api_key, metrics=self.metrics_text
            )
            app.include_router(control_router(self.drop, self.split.preview, self.config.api_key))
            await self._serve_http(guarded(app, console_policy(self.config.api_key, self._hosts())), sock, 1)
        if not self.config.idle:
            sock = bind_tcp(self.config.api, "API")
            self.api_port = sock.getsockname()[1]
            self._proxy = Proxy(
                self,
                api_key=self.config.api_key,
                request_timeout_s=self.config.backend.request_timeout_s,
                max_body_bytes=self.config.backend.max_body_bytes,
                gauges=self.gauges,
                status=lambda request: status_for_caller(
                    self.status(), request.client.host if request.client else "", self.config.api_key
                ),
            )
            # The proxy checks the key itself (OpenAI-shaped 401s); the guard checks the Host.
            policy = AccessPolicy(None, self._hosts(), json_only=False, max_body=None)
            # uvicorn's own deadline comes after the proxy's drain (grace, then ending answers).
            await self._serve_http(guarded(self._proxy.app, policy), sock, graceful_s=int(STOP_GRACE_S) + 5)

    def _hosts(self) -> frozenset[str]:
        """Host names the API and console answer for (DNS rebinding defence)."""
        bound = [c.host for c in (self.config.api, self.config.console) if c is not None]
        return allowed_hosts(bound, self.config.allow_hosts)

    def local_files(self) -> dict[str, Path]:
        """GGUF files offered from `<state-dir>/models/` (name = file stem), for splits and standbys."""
        folder = self.config.state_dir / "models"
        return {p.stem: p for p in sorted(folder.glob("*.gguf"))} if folder.is_dir() else {}

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
                await self._start_mesh()  # with --auto / --mesh-name, discovery picks the mesh
            advertiser = spawn_supervised("advertise", self._advertise_loop)
            if self._on_ready is not None:
                self._on_ready(self)
            if self.config.discovery.active:
                # In the background: the API and console are already up and stay up.
                self.discovery = Discovery(self.config.discovery, self, self.config.state_dir, __version__)
                discovering = spawn_supervised("discovery", self.discovery.run)
            await self._start_models()
            await self._stop.wait()
        finally:
            if discovering is not None:
                discovering.cancel()
                await asyncio.gather(discovering, return_exceptions=True)
            if self.discovery is not None:
                await self.discovery.stop()  # take the listing down before leaving the mesh
            if advertiser is not None:
                advertiser.cancel()
            await self._shutdown()
            self.runtime.remove()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 1 if self.fatal is not None else 0

    async def _start_mesh(self) -> None:
        credentials = load_or_create_credentials(self.config.state_dir, self.tokens)
        self.mesh = self._mesh_service(credentials, self.tokens)
        await self.mesh.start()

    def _mesh_service(self, credentials: MeshCredentials, tokens: list[InviteToken]) -> MeshService:
        settings = MeshSettings(
            self.config.state_dir,
            self.config.bind_port,
            tuple(t.encode() for t in tokens),
            gossip=GossipConfig(),
            transport=TransportConfig(quic_engine=self.config.quic_engine),
        )
        return MeshService(
            self.identity,
            credentials,
            settings,
            record_for(self.node_id, __version__, **self._record_fields()),
            tokens=tokens,
            http_target=self.local_model_port,
            rpc_target=self.split.rpc_port,
            on_change=self._mesh_changed,
        )

    # ---- DiscoveryHost: what discovery sees of the node and asks of it --------------------

    @property
    def is_client(self) -> bool:
        return self.config.client

    def discovery_changed(self) -> None:
        self.feed.bump()

    def mesh_facts(self) -> MeshFacts | None:
        """A snapshot of this node's mesh for its listing; None while it is in none."""
        if self.mesh is None or self.stopping:
            return None
        live = {
            node_id: view.record
            for node_id, view in self.mesh.peers().items()
            if view.status is PeerStatus.ALIVE
        }
        members = sorted(
            [n for n, rec in live.items() if not rec.client] + ([] if self.config.client else [self.node_id])
        )
        serving = sorted(
            {name for name, server in self.servers.items() if server.ready}
            | {ad.name for rec in live.values() for ad in rec.models if ad.role == "host" and ad.ready}
        )
        disk = {*self.on_disk, *self.resolved} | {m for rec in live.values() for m in rec.on_disk}
        wanted = [m for m in self.demand.wanted(self._served_map(), time.monotonic()) if m not in serving]
        return MeshFacts(
            node_id=self.node_id,
            mesh_id=self.mesh.credentials.mesh_id_hex,
            invite_token=self.mesh.invite_token,
            mesh_port=self.mesh.transport.port,
            node_count=len(members),
            client_count=sum(rec.client for rec in live.values()) + int(self.config.client),
            serving=tuple(serving),
            wanted=tuple(wanted),
            on_disk=tuple(sorted(disk - set(serving))),
            total_vram_bytes=self.capacity.offered_bytes
            + sum(r.capacity_bytes for r in live.values() if not r.client),
            peers=frozenset(live),
            members=tuple(members),
        )

    async def join_mesh(self, token: InviteToken, timeout_s: float) -> bool:
        """Move to the mesh of `token` if its node answers within `timeout_s`; else stay put."""
        if self.mesh is not None and self.mesh.credentials == token.credentials:
            return True
        await self._switch_mesh(
            self._mesh_service(token.credentials, [token]), wait_for=token.node_id, timeout_s=timeout_s
        )
        return self.mesh is not None and self.mesh.credentials == token.credentials

    async def start_own_mesh(self) -> None:
        """Found a mesh of our own (no candidate to join) and serve the best model we can."""
        if self._own_mesh is None:
            self._own_mesh = new_mesh()
        if self.mesh is None or self.mesh.credentials != self._own_mesh:
            await self._switch_mesh(self._mesh_service(self._own_mesh, []))
            if self.mesh is not None:
                # The token itself is not logged: a log line wraps, and a wrapped token does not
                # paste. `mesh-llm token` prints it on one line.
                log.info(
                    "started mesh %s; `mesh-llm token` prints its invite token",
                    self._own_mesh.mesh_id_hex[:8],
                )
        if self.config.client or self.servers or self.pending or self.split.hosts or self.config.models:
            return
        on_disk = set(self.on_disk) or set(await asyncio.to_thread(on_disk_names))
        name = pick_model(
            [(e.name, e.size_bytes) for e in CATALOG],
            self.capacity.offered_bytes,
            on_disk,
            allow_download=self.config.allow_download,
            fit_factor=FIT_FACTOR,
        )
        if name is None:
            log.info(
                "no catalog model fits this node's %.1f GB: waiting as a standby",
                self.capacity.offered_bytes / 1e9,
            )
            return
        log.info(
            "serving %s in the new mesh (the largest catalog model that fits%s)",
            name,
            " and is on disk" if name in on_disk else "",
        )
        self._spawn_serve(name)

    def _spawn_serve(self, name: str) -> None:
        task = asyncio.create_task(self._serve(name), name=f"serve-{name}")
        self._serving_tasks.add(task)
        task.add_done_callback(self._serving_tasks.discard)

    async def _switch_mesh(
        self, new: MeshService, *, wait_for: str | None = None, timeout_s: float = 0.0
    ) -> None:
        """Start `new`; keep it (leaving the old mesh) once `wait_for`'s node is linked, else drop it."""
        old = self.mesh
        if old is not None and self.config.bind_port:
            await old.stop()  # a fixed port cannot be held by both
            self.mesh = old = None
        await new.start()
        if wait_for is not None:
            deadline = time.monotonic() + timeout_s
            while not ((link := new.transport.link(wait_for)) is not None and link.is_open):
                if time.monotonic() >= deadline or self.stopping:
                    await new.stop()
                    return
                await asyncio.sleep(0.05)
        self.mesh = new
        self.tokens = list(new.tokens)
        if old is not None:
            await old.stop()
        self._changed()

    def _record_fields(self) -> dict[str, Any]:
        """What this node advertises; health follows the model servers' live checks."""
        models = tuple(
            ModelAd(
                name,
                server.ready,
                "host",
                in_flight=self.in_flight[name],
                layers=self._host_layers(name),
                free_slots=server.free_slots,
            )
            for name, server in sorted(self.servers.items())
        ) + tuple(self.split.worker_ads())
        if self.picking_up is not None and self.picking_up not in self.servers:
            # Resolving (perhaps assembling or downloading) before its server starts: say so, or
            # the mesh would see the model unserved and this node no longer a standby.
            models += (ModelAd(self.picking_up, False, "host"),)
        return {
            "role": self.role,
            "capacity_bytes": self.capacity.offered_bytes,
            "models": models,
            "on_disk": tuple(sorted(set(self.on_disk) | set(self.resolved))),
            "api_port": self.api_port or 0,
            "console_port": self.console_port or 0,
            "demand": self.demand.own_counters(),
            "client": self.config.client,
            "extra": {
                "splits": self.split.splits_record(),
                "wants": self.split.wants_record(),
                "declined": sorted(self.declined),
            },
        }

    def _host_layers(self, model: str) -> tuple[int, int] | None:
        host = self.split.hosts.get(model)
        if host is None or not isinstance(host.plan, Split):
            return None
        first = host.plan.shards[0]
        return (first.start_layer, first.end_layer)

    def _changed(self) -> None:
        self.feed.bump()
        if self.mesh is not None:
            self.mesh.advertise(**self._record_fields())

    def _mesh_changed(self) -> None:
        """A peer joined, left or changed its record: tell the page, and re-plan splits promptly."""
        self.feed.bump()
        self._poke.set()

    async def _advertise_loop(self) -> None:
        """Every second, or soon after a peer's record changes: merge demand, reconcile, advertise.

        Reacting to changes matters for splits: a worker starts as soon as it sees the host's
        plan, and the host loads as soon as it sees the workers ready, instead of up to a second
        later at each step.
        """
        last_eval = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), ADVERTISE_INTERVAL_S)
                await asyncio.sleep(REACT_DELAY_S)
            self._poke.clear()
            if self.mesh is None:
                continue
            now = time.monotonic()
            peers = self.mesh.peers()
            for node_id, view in peers.items():
                self.demand.merge(node_id, view.record.demand, now, generation=view.record.incarnation)
            await self.split.reconcile()
            self.mesh.advertise(**self._record_fields())
            if self.role == "standby" and not self.stopping and now - last_eval >= STANDBY_EVAL_S:
                last_eval = now
                await self._maybe_pick_up_work(now)

    async def _maybe_pick_up_work(self, now: float) -> None:
        """A standby takes the model the mesh-wide rules give it (identically computed everywhere)."""
        decision = choose_standby_work(
            self.node_id, self._standbys(), self._served_map(), self.demand.rates(now), self._model_sizes(),
            recent=self.demand.recent(now),
        )  # fmt: skip
        if decision is None or decision.model in self.declined:  # declined ones are never assigned
            return
        log.info(
            "standby picks up %s (%s, %.1f requests/min mesh-wide%s)",
            decision.model, decision.reason.value, decision.rate_rpm, ", downloading" if decision.download else "",
        )  # fmt: skip
        self.standby_state = f"loading {decision.model}"
        self.picking_up = decision.model
        try:
            await self._serve(decision.model)
        finally:
            self.picking_up = None
            self.standby_state = "idle"
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

    async def _shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish briefly, leave the mesh, stop children."""
        self.stopping = True
        self.feed.bump()
        for task in list(self._serving_tasks):
            task.cancel()
        api = self._http[1:] if self.config.console is not None else self._http
        for server, _ in api:
            server.should_exit = True  # no new connections; idle keep-alive ones close
        if self._proxy is not None:
            cut = await self._proxy.drain(self._grace_s)
            if cut:
                log.info("ended %d answer(s) in progress: this node is stopping", cut)
        await asyncio.gather(*(t for _, t in api), return_exceptions=True)
        await self.split.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        await asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True)
        if self._proxy is not None:
            await self._proxy.aclose()
        self.feed.close()
        for server, _ in self._http:
            server.should_exit = True
        await asyncio.gather(*(t for _, t in self._http), return_exceptions=True)


def _declined(extra: Mapping[str, Any]) -> frozenset[str]:
    """The models a peer's record says its user dropped there (it never takes them again)."""
    names = extra.get("declined")
    return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()
