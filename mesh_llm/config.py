"""Frozen configuration records, built once at the edge (the CLI) and passed down.

Nothing below the CLI reads environment variables or globals: flags (and the few environment
fallbacks the CLI documents) become these records in `build_config`, then
`Node(config, load_resources(config))`. Every part gets its own record from here: gossip,
transport, planner (the fit factor, the RTT cap), demand, split timings, the backend, the node's
own timings. Subsystems keep their defaults in their config classes, never in code below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mesh_llm.discovery._config import DiscoveryConfig, DiscoveryTiming, check_relay_url, check_tag
from mesh_llm.discovery._listing import DEFAULT_RELAYS
from mesh_llm.errors import ConfigError
from mesh_llm.mesh.gossip import GossipConfig
from mesh_llm.mesh.service import MeshTimings
from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.planning.demand import DemandConfig
from mesh_llm.planning.planner import PlanConfig
from mesh_llm.transport import DEFAULT_ENGINE, ENGINES, TransportConfig

DEFAULT_API_PORT = 9337
DEFAULT_CONSOLE_PORT = 3131
# Share of system RAM a GPU-less node offers as its capacity: the rest stays for the OS,
# the KV cache and whatever else the machine runs.
CPU_RAM_FRACTION = 0.75
API_KEY_ENV = "MESH_LLM_API_KEY"  # the API key when --api-key is not given
GIB = 1024**3


@dataclass(frozen=True)
class HttpConfig:
    """Where one of the node's HTTP servers listens."""

    host: str
    port: int


@dataclass(frozen=True)
class BackendConfig:
    """How model-server subprocesses are started and supervised."""

    n_ctx: int = DEFAULT_CTX_SLOT  # per slot
    n_parallel: int = 4  # slots per model server
    max_queue: int = 64
    max_body_bytes: int = 8 * 1024 * 1024
    n_threads: int | None = None  # llama.cpp's default: physical cores
    startup_timeout_s: float = 300.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 3.0
    restart_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
    stop_timeout_s: float = 5.0
    request_timeout_s: float = 600.0  # upper bound on one proxied request
    draft: str | None = None  # None: the catalog pairing; "off"; "lookup"; a GGUF path or catalog name
    draft_max: int = 8  # most draft tokens verified per slot and step
    # Size n_ctx by planning/offload.auto_ctx (training context, capped, within the memory left
    # after the weights, on GPUs and the CPU): only without --ctx-size and for a node given at
    # most one model (with several, each gets the n_ctx the planner counted).
    n_ctx_auto: bool = False
    gpu_budget_bytes: int | None = None  # --max-vram: weights, drafts and KV caches stay within it
    cache_type_k: str | None = None  # KV cache types (None: llama.cpp's f16); see planning/offload.py
    cache_type_v: str | None = None


@dataclass(frozen=True)
class SplitConfig:
    """How this node takes part in split models."""

    force: bool = False  # `--split`: split the models asked of this node even if they fit it
    max_duties: int = 4  # split models one node holds layers for at once: bounds what members can ask
    remember_s: float = 600.0  # a split model seen this recently is taken over when its host is gone
    join_grace_s: float = 3.0  # a node coordinates nothing until gossip has shown it the whole mesh


@dataclass(frozen=True)
class NodeTiming:
    """The node's own clocks: how often it advertises, how soon it reacts, how long it drains."""

    advertise_interval_s: float = 1.0
    react_delay_s: float = 0.1  # after a peer's record changed, reconcile this soon (bursts coalesce)
    # How often a standby looks for work: each pass of the advertise loop (a second, or just after
    # a peer's record changed), so a model that lost its last server is picked up within seconds.
    standby_eval_s: float = 0.5
    stop_grace_s: float = 5.0  # how long SIGTERM lets answers in progress finish before ending them
    stop_step_s: float = 15.0  # a step of the stop (delisting, leaving the mesh…) that overruns is left
    stop_deadline_s: float = 60.0  # a stop still not done this long after it began ends the process
    known_model_memory_s: float = 600.0  # a model seen in the mesh this recently answers 503, not 404


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to run; built by `build_config` from CLI flags."""

    models: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    client: bool = False
    api: HttpConfig = field(default_factory=lambda: HttpConfig("127.0.0.1", DEFAULT_API_PORT))
    console: HttpConfig | None = field(default_factory=lambda: HttpConfig("127.0.0.1", DEFAULT_CONSOLE_PORT))
    api_key: str | None = None
    state_dir: Path = field(default_factory=lambda: Path.home() / ".mesh-llm")
    max_vram_bytes: int | None = None
    bind_port: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    planner: PlanConfig = field(default_factory=PlanConfig)
    device: str | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    allow_download: bool = True
    allow_hosts: tuple[str, ...] = ()  # extra Host names the API and console answer for
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    demand: DemandConfig = field(default_factory=DemandConfig)
    timing: NodeTiming = field(default_factory=NodeTiming)
    mesh_timing: MeshTimings = field(default_factory=MeshTimings)

    @property
    def idle(self) -> bool:
        """A node with nothing to serve and no mesh to join: read-only console and instructions."""
        return not self.models and not self.join and not self.client and not self.discovery.active


def _port(value: int, flag: str) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag} must be a port number between 0 and 65535, not {value}")
    return value


def build_config(
    *,
    models: list[str] | None = None,
    join: list[str] | None = None,
    client: bool = False,
    port: int = DEFAULT_API_PORT,
    console: int = DEFAULT_CONSOLE_PORT,
    no_console: bool = False,
    listen_all: bool = False,
    api_key: str | None = None,
    state_dir: str | None = None,
    max_vram: float | None = None,
    bind_port: int = 0,
    split: bool = False,
    device: str | None = None,
    ctx_size: int | None = None,
    cache_type_k: str | None = None,
    cache_type_v: str | None = None,
    threads: int | None = None,
    parallel: int = 4,
    max_queue: int = 64,
    max_body_mb: float = 8,
    allow_hosts: list[str] | None = None,
    quic: str = DEFAULT_ENGINE,
    draft: str | None = None,
    no_draft: bool = False,
    draft_max: int = 8,
    auto: bool = False,
    publish: bool = False,
    mesh_name: str | None = None,
    region: str | None = None,
    max_clients: int | None = None,
    nostr_relays: list[str] | None = None,
    no_lan: bool = False,
    discovery_timing: str | None = None,
) -> NodeConfig:
    """Validate flag values and build the node's configuration."""
    models = list(models or [])
    if client and models:
        raise ConfigError("--client nodes never serve models: drop --model or --client")
    discovery = _discovery(
        client=client, joins=bool(join), auto=auto, publish=publish, mesh_name=mesh_name, region=region,
        max_clients=max_clients, relays=nostr_relays, lan=not no_lan, timing=discovery_timing,
    )  # fmt: skip
    if client and not join and not discovery.finds:
        raise ConfigError("--client needs a mesh to use: add --join <token>, or --auto to find one")
    if max_vram is not None and max_vram <= 0:
        raise ConfigError(f"--max-vram must be a positive number of GB, not {max_vram}")
    from mesh_llm.planning.offload import cache_type

    for kv_type in (cache_type_k, cache_type_v):
        if kv_type is not None:
            cache_type(kv_type)  # ConfigError naming the types there are
    if ctx_size is not None and ctx_size < 256:
        raise ConfigError(f"--ctx-size must be at least 256, not {ctx_size}")
    if draft is not None and no_draft:
        raise ConfigError("--draft and --no-draft contradict each other: give one")
    if not 1 <= draft_max <= 32:
        raise ConfigError(f"--draft-max must be between 1 and 32, not {draft_max}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, not {threads}")
    if not 1 <= parallel <= 64:
        raise ConfigError(f"--parallel must be between 1 and 64, not {parallel}")
    if max_queue < 0:
        raise ConfigError(f"--max-queue must be 0 or more, not {max_queue}")
    if not max_body_mb > 0:
        raise ConfigError(f"--max-body must be a positive number of MB, not {max_body_mb}")
    host = "0.0.0.0" if listen_all else "127.0.0.1"
    api_port = _port(port, "--port")
    console_port = _port(console, "--console")
    if not no_console and api_port == console_port and api_port != 0:
        raise ConfigError(f"--port and --console must differ (both are {api_port})")
    engine = _quic_engine(quic)
    planner = PlanConfig()
    return NodeConfig(
        models=tuple(models),
        join=tuple(join or []),
        client=client,
        api=HttpConfig(host, api_port),
        console=None if no_console else HttpConfig(host, console_port),
        api_key=api_key or None,
        state_dir=Path(state_dir).expanduser() if state_dir else Path.home() / ".mesh-llm",
        max_vram_bytes=int(max_vram * GIB) if max_vram is not None else None,
        bind_port=_port(bind_port, "--bind-port"),
        split=SplitConfig(force=split),
        planner=planner,
        demand=DemandConfig(fit_factor=planner.fit_factor),  # one fit rule for splits and standbys
        transport=TransportConfig(quic_engine=engine),
        gossip=GossipConfig(),
        timing=NodeTiming(),
        mesh_timing=MeshTimings(),
        device=device,
        backend=BackendConfig(
            n_ctx=ctx_size or DEFAULT_CTX_SLOT,
            n_ctx_auto=ctx_size is None and len(models) <= 1,
            gpu_budget_bytes=int(max_vram * GIB) if max_vram is not None else None,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            n_parallel=parallel,
            max_queue=max_queue,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            n_threads=threads,
            draft="off" if no_draft else draft,
            draft_max=draft_max,
        ),
        allow_download=not client,
        allow_hosts=tuple(h.strip() for h in allow_hosts or [] if h.strip()),
        discovery=discovery,
    )


def _discovery(
    *,
    client: bool,
    joins: bool,
    auto: bool,
    publish: bool,
    mesh_name: str | None,
    region: str | None,
    max_clients: int | None,
    relays: list[str] | None,
    lan: bool,
    timing: str | None,
) -> DiscoveryConfig:
    name = check_tag(mesh_name, "--mesh-name")
    if joins and (auto or name is not None):
        raise ConfigError(
            f"{'--auto' if auto else '--mesh-name'} finds the mesh itself: give it or --join, not both"
        )
    if client and publish:
        raise ConfigError("--client nodes do not publish a mesh: drop --publish or --client")
    publishes = publish or (name is not None and not client)
    if max_clients is not None:
        if max_clients < 1:
            raise ConfigError(f"--max-clients must be at least 1, not {max_clients}")
        if not publishes:
            raise ConfigError("--max-clients limits a published mesh: add --publish or --mesh-name")
    return DiscoveryConfig(
        publish=publishes,
        auto=auto,
        mesh_name=name,
        region=check_tag(region, "--region"),
        max_clients=max_clients,
        relays=tuple(check_relay_url(u) for u in relays) if relays else DEFAULT_RELAYS,
        lan=lan,
        timing=DiscoveryTiming().with_overrides(timing) if timing else DiscoveryTiming(),
    )


def _quic_engine(name: str) -> str:
    if name not in ENGINES:
        raise ConfigError(f"--quic must be one of {', '.join(ENGINES)}, not {name!r}")
    return name


def api_key_from_env(environ: os._Environ[str] | dict[str, str]) -> str | None:
    """The CLI's documented fallback: MESH_LLM_API_KEY when --api-key is not given."""
    value = environ.get(API_KEY_ENV, "").strip()
    return value or None
