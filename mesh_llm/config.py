"""Frozen configuration records, built once at the edge (the CLI) and passed down.

Nothing below the CLI reads environment variables or globals: flags (and the few environment
fallbacks the CLI documents) become these records in `build_config`, then
`Node(config, load_resources(config))`. Every part gets its own record from here: gossip,
transport, planner (the fit factor, the RTT cap), demand, split timings, the backend, the node's
own timings. A flag's name, default and bounds are declared once, in mesh_llm.settings, and the
records below take those defaults from there; other defaults stay in the config classes, never
in code below.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_llm.discovery import DEFAULT_RELAYS, DiscoveryConfig, DiscoveryTiming, check_relay_url, check_tag
from mesh_llm.errors import ConfigError
from mesh_llm.mesh.gossip import GossipConfig
from mesh_llm.mesh.nat import NatTimings
from mesh_llm.mesh.service import MeshTimings
from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.planning.demand import DemandConfig
from mesh_llm.planning.planner import PlanConfig
from mesh_llm.settings import NODE, find, node_default, resolve
from mesh_llm.transport import TransportConfig

DEFAULT_API_PORT: int = node_default("port")
DEFAULT_CONSOLE_PORT: int = node_default("console")
# Share of system RAM a GPU-less node offers as its capacity: the rest stays for the OS,
# the KV cache and whatever else the machine runs.
CPU_RAM_FRACTION = 0.75
API_KEY_ENV: str = find(NODE, "api_key").env or ""  # the API key when --api-key is not given
MIB = 1024**2
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
    n_parallel: int = node_default("parallel")  # slots per model server
    max_queue: int = node_default("max_queue")
    max_body_bytes: int = int(node_default("max_body_mb") * MIB)
    n_threads: int | None = None  # llama.cpp's default: physical cores
    startup_timeout_s: float = 300.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 3.0
    restart_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
    stop_timeout_s: float = 5.0
    request_timeout_s: float = 600.0  # upper bound on one proxied request
    first_content_s: float = node_default("first_content_s")  # a stream's host, until its first content
    draft: str | None = None  # None: the catalog pairing; "off"; "lookup"; a GGUF path or catalog name
    draft_max: int = node_default("draft_max")  # most draft tokens verified per slot and step
    # Size n_ctx by planning/offload.auto_ctx (training context, capped, within the memory left
    # after the weights, on GPUs and the CPU): only without --ctx-size and for a node given at
    # most one model (with several, each gets the n_ctx the planner counted).
    n_ctx_auto: bool = False
    gpu_budget_bytes: int | None = None  # --max-vram: weights, drafts and KV caches stay within it
    cache_type_k: str | None = None  # KV cache types (None: llama.cpp's f16); see planning/offload.py
    cache_type_v: str | None = None
    # The KV prefix cache beyond the slots, per model server: RAM (0: off) and disk under cache_dir.
    cache_ram_bytes: int = 0
    cache_disk_bytes: int = 0
    cache_dir: Path | None = None
    # Where model servers' Unix sockets live (made mode 0700); None: a private temporary directory.
    socket_dir: Path | None = None


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
    state_dir: Path = field(default_factory=lambda: Path(node_default("state_dir")).expanduser())
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


def _cache_ram_bytes(gb: float | None) -> int:
    """``--cache-ram`` in bytes; not given: a tenth of this machine's RAM, at most 8 GB."""
    if gb is not None:
        return int(gb * GIB)
    import psutil

    return min(8 * GIB, psutil.virtual_memory().total // 10)


def build_config(
    flags: argparse.Namespace | Mapping[str, Any] | None = None,
    /,
    *,
    environ: Mapping[str, str] | None = None,
    **values: Any,
) -> NodeConfig:
    """Validate the node's settings and build its configuration: the one place flags become records.

    ``flags`` is the parsed command line (or a mapping by setting name, see mesh_llm.settings);
    ``values`` override it by the same names. What neither gives is read from the setting's
    environment variable in ``environ`` (the CLI passes os.environ), else is its default.
    """
    given = dict(vars(flags) if isinstance(flags, argparse.Namespace) else flags or {})
    v = resolve(NODE, {**given, **values}, environ)
    models = list(v["models"])
    client = v["client"]
    if client and models:
        raise ConfigError("--client nodes never serve models: drop --model or --client")
    discovery = _discovery(
        client=client, joins=bool(v["join"]), auto=v["auto"], publish=v["publish"], mesh_name=v["mesh_name"],
        region=v["region"], max_clients=v["max_clients"], relays=v["nostr_relays"], lan=not v["no_lan"],
        timing=v["discovery_timing"],
    )  # fmt: skip
    if client and not v["join"] and not discovery.finds:
        raise ConfigError("--client needs a mesh to use: add --join <token>, or --auto to find one")
    from mesh_llm.planning.offload import cache_type

    for kv_type in (v["cache_type_k"], v["cache_type_v"]):
        if kv_type is not None:
            cache_type(kv_type)  # ConfigError naming the types there are
    if v["draft"] is not None and v["no_draft"]:
        raise ConfigError("--draft and --no-draft contradict each other: give one")
    host = "0.0.0.0" if v["listen_all"] else "127.0.0.1"
    api_port, console_port = v["port"], v["console"]
    if not v["no_console"] and api_port == console_port and api_port != 0:
        raise ConfigError(f"--port and --console must differ (both are {api_port})")
    max_vram_bytes = int(v["max_vram"] * GIB) if v["max_vram"] is not None else None
    cache_ram_bytes = 0 if client else _cache_ram_bytes(v["cache_ram"])
    planner = PlanConfig()
    return NodeConfig(
        models=tuple(models),
        join=tuple(v["join"]),
        client=client,
        api=HttpConfig(host, api_port),
        console=None if v["no_console"] else HttpConfig(host, console_port),
        api_key=v["api_key"] or None,
        state_dir=Path(v["state_dir"]).expanduser(),
        max_vram_bytes=max_vram_bytes,
        bind_port=v["bind_port"],
        split=SplitConfig(force=v["split"]),
        planner=planner,
        demand=DemandConfig(fit_factor=planner.fit_factor),  # one fit rule for splits and standbys
        transport=TransportConfig(
            quic_engine=v["quic"],
            relay_bytes_per_s=int(v["relay_max_mbps"] * 1_000_000 / 8) if v["relay_max_mbps"] else 0,
        ),
        gossip=GossipConfig(),
        timing=NodeTiming(),
        mesh_timing=MeshTimings(nat=NatTimings(relay=not v["no_relay"])),
        device=v["device"],
        backend=BackendConfig(
            n_ctx=v["ctx_size"] or DEFAULT_CTX_SLOT,
            n_ctx_auto=v["ctx_size"] is None and len(models) <= 1,
            gpu_budget_bytes=max_vram_bytes,
            cache_type_k=v["cache_type_k"],
            cache_type_v=v["cache_type_v"],
            cache_ram_bytes=cache_ram_bytes,
            cache_disk_bytes=int(v["cache_disk"] * GIB) if cache_ram_bytes else 0,
            cache_dir=Path(v["state_dir"]).expanduser() / "kv",
            socket_dir=Path(v["state_dir"]).expanduser() / "run",
            n_parallel=v["parallel"],
            max_queue=v["max_queue"],
            max_body_bytes=int(v["max_body_mb"] * MIB),
            first_content_s=v["first_content_s"],
            n_threads=v["threads"],
            draft="off" if v["no_draft"] else v["draft"],
            draft_max=v["draft_max"],
        ),
        allow_download=not client,
        allow_hosts=tuple(h.strip() for h in v["allow_hosts"] if h.strip()),
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
    if max_clients is not None and not publishes:
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


def api_key_from_env(environ: Mapping[str, str]) -> str | None:
    """The CLI's documented fallback, MESH_LLM_API_KEY, for commands that talk to the node."""
    value: str | None = resolve(NODE, {}, environ)["api_key"]
    return value
