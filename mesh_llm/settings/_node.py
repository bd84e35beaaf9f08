"""The node's flags, `mesh-llm [options]`: one `Setting` each, in the order the help lists them.

`part` names the record of `NodeConfig` a flag feeds (`build_config` turns the values into those
records); `child` names the model-server flag that carries it on (see `_model_server`).
"""

from __future__ import annotations

from typing import Any

from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.planning.offload import MAX_AUTO_CTX
from mesh_llm.settings._setting import Setting, find

DISCOVERY = "discovery"
GROUPS = {
    DISCOVERY: "discovery (a published mesh is PUBLIC: anyone who sees its listing can join and use it)"
}
PORTS: dict[str, Any] = {"lo": 0, "hi": 65535, "metavar": "PORT"}

NODE: tuple[Setting, ...] = (
    Setting(
        "models", flag="--model", repeat=True, metavar="NAME|PATH",
        help="serve a model: a catalog name (downloaded if needed) or a path to a .gguf file; repeatable",
    ),
    Setting(
        "join", repeat=True, metavar="TOKEN", part="mesh",
        help="join the mesh of this invite token (spaces and line breaks in it are ignored); repeatable",
    ),
    Setting(
        "client", bool,
        help="API-only member (needs --join, --auto or --mesh-name): never serves, never downloads, "
        "offers no capacity",
    ),
    Setting(
        "auto", bool, part=DISCOVERY, group=DISCOVERY,
        help="find a mesh to join (LAN first, then Nostr) instead of a token; if none, start one "
        "(serving nodes) or look again every 15 s (clients)",
    ),
    Setting(
        "publish", bool, part=DISCOVERY, group=DISCOVERY,
        help="list this mesh, invite token included, on Nostr relays and the LAN: anyone can then join it",
    ),
    Setting(
        "mesh_name", metavar="NAME", part=DISCOVERY, group=DISCOVERY,
        help="join the published mesh of this name (any case), or start and publish it; implies --publish "
        "(not for clients)",
    ),
    Setting(
        "region", metavar="R", part=DISCOVERY, group=DISCOVERY,
        help="tag the listing with a region; --auto prefers it",
    ),
    Setting(
        "max_clients", int, metavar="N", lo=1, shown="no cap", part=DISCOVERY, group=DISCOVERY,
        help="take the listing down while N clients are connected",
    ),
    Setting(
        "no_lan", bool, part=DISCOVERY, group=DISCOVERY,
        help="neither advertise nor look for meshes on the LAN (mDNS): Nostr relays only",
    ),
    Setting(
        "nostr_relays", flag="--nostr-relay", repeat=True, metavar="URL", shown="upstream's three relays",
        part=DISCOVERY, group=DISCOVERY,
        help="a Nostr relay (ws:// or wss://) to publish and look on; repeatable; replaces the default list",
    ),
    # Tests shorten discovery's periods (publish=,alone=,client_retry=,... in seconds).
    Setting("discovery_timing", part=DISCOVERY, group=DISCOVERY, hidden=True),
    Setting("port", int, 9337, part="api", help="OpenAI API port", **PORTS),
    Setting("console", int, 3131, part="api", help="web console port; --no-console turns it off", **PORTS),
    Setting("no_console", bool, part="api", help="do not serve the web console"),
    Setting(
        "allow_hosts", flag="--allow-host", repeat=True, metavar="NAME", part="api",
        help="another Host name the API and console answer for (a DNS name of this machine); repeatable",
    ),
    Setting("listen_all", bool, part="api", help="bind the API and console on 0.0.0.0 instead of 127.0.0.1"),
    Setting(
        "api_key", metavar="KEY", env="MESH_LLM_API_KEY", part="api",
        help="require 'Authorization: Bearer KEY' on /v1 and the console",
    ),
    Setting(
        "max_vram", float, metavar="GB", positive=True, shown="all",
        help="cap the memory this node offers the mesh",
    ),
    Setting(
        "bind_port", int, 0, shown="the last run's, else any", part="mesh",
        help="UDP port for mesh traffic", **PORTS,
    ),
    Setting(
        "no_relay", bool, part="mesh",
        help="never carry other members' traffic: members behind NATs that cannot punch through to "
        "each other then relay through other members only",
    ),
    Setting(
        "relay_max_mbps", float, metavar="MBPS", positive=True, shown="no cap", part="mesh",
        help="cap the bandwidth this node relays for other members, in megabits per second",
    ),
    Setting(
        "quic", default="qh3", choices=("qh3", "aioquic"), env="MESH_LLM_QUIC", part="transport",
        help="QUIC library under the mesh; nodes on either interoperate",
    ),
    Setting(
        "draft", metavar="PATH|NAME|lookup", shown="the catalog's draft when it is on disk", part="backend",
        child="draft", help="speculative decoding with this draft model, or 'lookup' (prompt lookup, no model)",
    ),
    Setting("no_draft", bool, part="backend", help="turn speculative decoding off"),
    Setting(
        "draft_max", int, 8, metavar="N", lo=1, hi=32, part="backend", child="draft_max",
        help="most draft tokens verified per step",
    ),
    Setting("split", bool, part="split", help="split models across nodes even when they fit on one"),
    Setting(
        "device", metavar="CUDA0,...|CPU", shown="every GPU, else the CPU",
        help="ggml devices to serve from (see `mesh-llm gpus`)",
    ),
    Setting(
        "state_dir", default="~/.mesh-llm", metavar="DIR",
        help="where keys, logs and state live; give each node on one machine its own",
    ),
    Setting(
        "ctx_size", int, metavar="N", lo=256, part="backend", child="n_ctx",
        shown=f"the model's training context, at most {MAX_AUTO_CTX}, and no more than the memory left "
        "after the weights holds for every --parallel slot, on GPUs and the CPU; "
        f"{DEFAULT_CTX_SLOT} each when a node is given several models",
        help="context window per request slot; a warning is logged when N exceeds the training context",
    ),
    Setting(
        "cache_type_k", metavar="TYPE", shown="f16", part="backend", child="cache_type_k",
        help="KV cache type for K: f16, q8_0, q4_0, ...",
    ),
    Setting(
        "cache_type_v", metavar="TYPE", shown="f16", part="backend", child="cache_type_v",
        help="KV cache type for V: f16, q8_0, q4_0, ...",
    ),
    Setting(
        "parallel", int, 4, metavar="N", lo=1, hi=64, part="backend", child="parallel",
        help="requests each model decodes together",
    ),
    Setting(
        "max_queue", int, 64, metavar="N", lo=0, part="backend", child="max_queue",
        help="requests that may wait for a free slot before new ones get 503",
    ),
    Setting(
        "max_body_mb", float, 8.0, flag="--max-body", metavar="MB", positive=True, part="backend",
        child="max_body", help="largest request body in MB (413 beyond)",
    ),
    Setting(
        "first_content_s", float, 300.0, flag="--first-content-timeout", metavar="S", positive=True,
        part="backend",
        help="seconds a streamed request's host has for its first content (a cold prefill of a long "
        "prompt included) before the request is retried on another host, or fails",
    ),
    Setting(
        "cache_ram", float, metavar="GB", lo=0, shown="a tenth of the RAM, at most 8", part="backend",
        child="cache_ram", help="RAM for each model server's KV prefix cache beyond its slots "
        "(counted out of the memory offered to the mesh); 0 turns the prefix cache off",
    ),
    Setting(
        "cache_disk", float, 8.0, metavar="GB", lo=0, part="backend", child="cache_disk",
        help="disk for each model's saved KV prefixes under <state-dir>/kv/, kept across restarts; 0: RAM only",
    ),
    Setting(
        "threads", int, metavar="N", lo=1, shown="half the cores for decoding, all for prompts", part="backend",
        child="n_threads", help="CPU threads per model server",
    ),
    Setting("verbose", bool, short="-v", part="log", help="debug logging"),
    Setting(
        "log_format", default="text", choices=("text", "json"), part="log",
        help="text: lines for people; json: one JSON object per line, for machines",
    ),
)  # fmt: skip


def node_default(name: str) -> Any:
    """The default of the node's setting ``name``: what config records use when built without flags."""
    return find(NODE, name).default
