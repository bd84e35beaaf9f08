"""The node's flags: `mesh-llm [options]`, with the subcommands listed in its help."""

from __future__ import annotations

import argparse
import os

from mesh_llm import __version__
from mesh_llm.cli._commands import SUBCOMMANDS
from mesh_llm.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT
from mesh_llm.models.kv import DEFAULT_CTX_SLOT
from mesh_llm.planning.offload import MAX_AUTO_CTX
from mesh_llm.transport import DEFAULT_ENGINE, ENGINES


def _epilog() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (summary, _) in SUBCOMMANDS.items()]
    return "commands:\n" + "\n".join(lines) + "\n\nRun `mesh-llm COMMAND --help` for a command's own options."


def node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh-llm",
        usage="mesh-llm [options]  |  mesh-llm COMMAND [options]",
        description="Pool spare GPU/CPU capacity across machines and serve LLMs behind one OpenAI-compatible API.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="serve a model: a catalog name (downloaded if needed) or a path to a .gguf file; repeatable",
    )
    p.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="TOKEN",
        help="join the mesh of this invite token (spaces and line breaks in it are ignored); repeatable",
    )
    p.add_argument(
        "--client",
        action="store_true",
        help="API-only member: never serves, never downloads, offers no capacity",
    )
    _discovery_flags(p)
    p.add_argument(
        "--port", type=int, default=DEFAULT_API_PORT, help=f"OpenAI API port (default {DEFAULT_API_PORT})"
    )
    p.add_argument(
        "--console",
        type=int,
        default=DEFAULT_CONSOLE_PORT,
        help=f"web console port (default {DEFAULT_CONSOLE_PORT})",
    )
    p.add_argument("--no-console", action="store_true", help="do not serve the web console")
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="another Host name the API and console answer for (a DNS name of this machine); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--listen-all", action="store_true", help="bind the API and console on 0.0.0.0 instead of 127.0.0.1"
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 (default: $MESH_LLM_API_KEY)",
    )
    p.add_argument(
        "--max-vram", type=float, default=None, metavar="GB", help="cap the memory this node offers the mesh"
    )
    p.add_argument(
        "--bind-port", type=int, default=0, metavar="PORT", help="UDP port for mesh traffic (default: any)"
    )
    p.add_argument(
        "--quic",
        choices=ENGINES,
        default=os.environ.get("MESH_LLM_QUIC") or DEFAULT_ENGINE,
        help=f"QUIC library under the mesh (default {DEFAULT_ENGINE}, or $MESH_LLM_QUIC); nodes on either interoperate",
    )
    p.add_argument(
        "--draft",
        default=None,
        metavar="PATH|NAME|lookup",
        help="speculative decoding with this draft model, or 'lookup' (prompt lookup, no model); "
        "default: the catalog's draft when it is on disk",
    )
    p.add_argument("--no-draft", action="store_true", help="turn speculative decoding off")
    p.add_argument(
        "--draft-max",
        type=int,
        default=8,
        metavar="N",
        help="most draft tokens verified per step (default 8)",
    )
    p.add_argument("--split", action="store_true", help="split models across nodes even when they fit on one")
    p.add_argument(
        "--device",
        default=None,
        metavar="CUDA0,...|CPU",
        help="ggml devices to serve from (default: every GPU, else the CPU; see `mesh-llm gpus`)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where keys, logs and state live (default ~/.mesh-llm)",
    )
    p.add_argument(
        "--ctx-size",
        type=int,
        default=None,
        metavar="N",
        help="context window per request slot (default: the model's training context, at most "
        f"{MAX_AUTO_CTX}, and no more than the memory left after the weights holds for every "
        f"--parallel slot, on GPUs and the CPU; {DEFAULT_CTX_SLOT} each when a node is given several models); "
        "a warning is logged when N exceeds the training context",
    )
    p.add_argument(
        "--cache-type-k",
        default=None,
        metavar="TYPE",
        help="KV cache type for K: f16 (default), q8_0, q4_0, ...",
    )
    p.add_argument(
        "--cache-type-v",
        default=None,
        metavar="TYPE",
        help="KV cache type for V: f16 (default), q8_0, q4_0, ...",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="requests each model decodes together (default 4)",
    )
    p.add_argument(
        "--max-queue", type=int, default=64, metavar="N",
        help="requests that may wait for a free slot before new ones get 503 (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--max-body", type=float, default=8, metavar="MB", help="largest request body in MB (default 8)"
    )
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads per model server")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text: lines for people (default); json: one JSON object per line, for machines",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"mesh-llm {__version__}")
    return p


def _discovery_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "discovery (a published mesh is PUBLIC: anyone who sees its listing can join and use it)"
    )
    g.add_argument(
        "--auto", action="store_true",
        help="find a mesh to join (LAN first, then Nostr) instead of a token; if none, start one",
    )  # fmt: skip
    g.add_argument(
        "--publish", action="store_true",
        help="list this mesh, invite token included, on Nostr relays and the LAN: anyone can then join it",
    )  # fmt: skip
    g.add_argument(
        "--mesh-name", default=None, metavar="NAME",
        help="join the published mesh of this name (any case), or start and publish it; implies --publish",
    )  # fmt: skip
    g.add_argument(
        "--region", default=None, metavar="R", help="tag the listing with a region; --auto prefers it"
    )
    g.add_argument(
        "--max-clients", type=int, default=None, metavar="N",
        help="take the listing down while N clients are connected",
    )  # fmt: skip
    g.add_argument(
        "--no-lan", action="store_true",
        help="neither advertise nor look for meshes on the LAN (mDNS): Nostr relays only",
    )  # fmt: skip
    g.add_argument(
        "--nostr-relay", action="append", default=[], metavar="URL",
        help="a Nostr relay (ws:// or wss://) to publish and look on; repeatable; replaces the default list",
    )  # fmt: skip
    # Tests shorten discovery's periods (publish=,alone=,client_retry=,... in seconds).
    g.add_argument("--discovery-timing", default=None, help=argparse.SUPPRESS)
