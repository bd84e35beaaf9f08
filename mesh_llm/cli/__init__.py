"""The `mesh-llm` command: flags -> NodeConfig -> Node, plus small subcommands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh_llm import __version__
from mesh_llm.cli.logs import setup_logging
from mesh_llm.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, api_key_from_env, build_config
from mesh_llm.errors import MeshError
from mesh_llm.mesh.transport import DEFAULT_ENGINE, ENGINES

console = Console(stderr=True)
log = logging.getLogger("mesh_llm.cli")

PUBLIC_WARNING = (
    "[yellow]public:[/] this mesh is published{where}: its listing carries an invite token, and anyone "
    "who reads it can join the mesh and use its models. Publish only a mesh you mean to share."
)

IDLE_HELP = """[bold]mesh-llm[/] is running idle: nothing is served, the console is read-only.

  Serve a model and start a mesh:   [cyan]mesh-llm --model SmolLM2-135M[/]   (or any catalog name / .gguf path)
  Join a mesh with this machine:    [cyan]mesh-llm --join <token>[/]
  Use a mesh without serving:       [cyan]mesh-llm --client --join <token>[/]
  Find a public mesh and use it:    [cyan]mesh-llm --client --auto[/]   (see what is out there: [cyan]mesh-llm discover[/])
  See the model catalog:            [cyan]mesh-llm download[/]
"""


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
        help="context window per request slot (default 4096; on GPUs, what the memory left after the weights holds)",
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


def error(message: str) -> None:
    """One error line on stderr, never wrapped (rich would wrap it at the terminal width)."""
    console.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)


def print_token(token: str, *, to: Any = None) -> None:
    """A token on a line of its own, never wrapped, so a terminal copy gets all of it."""
    print(token, file=to or sys.stderr, flush=True)


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
        "--nostr-relay", action="append", default=[], metavar="URL",
        help="a Nostr relay (ws:// or wss://) to publish and look on; repeatable; replaces the default list",
    )  # fmt: skip
    # Tests shorten discovery's periods (publish=,alone=,client_retry=,... in seconds).
    g.add_argument("--discovery-timing", default=None, help=argparse.SUPPRESS)


def run_node(argv: Sequence[str]) -> int:
    args = node_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format, console)
    try:
        config = build_config(
            models=args.model,
            join=args.join,
            client=args.client,
            port=args.port,
            console=args.console,
            no_console=args.no_console,
            listen_all=args.listen_all,
            api_key=args.api_key or api_key_from_env(os.environ),
            state_dir=args.state_dir,
            max_vram=args.max_vram,
            bind_port=args.bind_port,
            split=args.split,
            device=args.device,
            ctx_size=args.ctx_size,
            cache_type_k=args.cache_type_k,
            cache_type_v=args.cache_type_v,
            threads=args.threads,
            parallel=args.parallel,
            max_queue=args.max_queue,
            max_body_mb=args.max_body,
            allow_hosts=args.allow_host,
            quic=args.quic,
            draft=args.draft,
            no_draft=args.no_draft,
            draft_max=args.draft_max,
            auto=args.auto,
            publish=args.publish,
            mesh_name=args.mesh_name,
            region=args.region,
            max_clients=args.max_clients,
            nostr_relays=args.nostr_relay,
            discovery_timing=args.discovery_timing,
        )
        from mesh_llm.models.draft import OFF, resolve_draft_spec
        from mesh_llm.models.resolve import validate_spec

        for spec in config.models:
            validate_spec(spec)
        if config.backend.draft not in (None, OFF):
            resolve_draft_spec(config.backend.draft)
    except MeshError as exc:
        error(f"{exc}")
        return 2
    if config.api.host == "0.0.0.0" and config.api_key is None:
        console.print(
            "[yellow]warning:[/] --listen-all without --api-key: anyone who can reach this machine can use the API"
        )

    if config.discovery.publish:
        where = " on " + ", ".join(config.discovery.relays) + " and the LAN"
        console.print(PUBLIC_WARNING.format(where=where))

    from mesh_llm.node import Node, load_resources

    def ready(node: Node) -> None:
        if args.log_format == "json":
            log.info(
                "ready",
                extra={"fields": {
                    "node_id": node.node_id, "api_port": node.api_port, "console_port": node.console_port,
                    "mesh_port": node.mesh.transport.port if node.mesh else None,
                    "invite_token": node.mesh.invite_token if node.mesh else None,
                }},
            )  # fmt: skip
            return
        if config.idle:
            console.print(IDLE_HELP)
        if node.console_port:
            console.print(f"console  [link]http://127.0.0.1:{node.console_port}[/]")
        if node.api_port:
            console.print(
                f"API      http://127.0.0.1:{node.api_port}/v1{'  (API key required)' if config.api_key else ''}"
            )
        for spec in config.models:
            console.print(f"model    {spec}  (loading…)")
        if node.mesh is not None:
            console.print(f"node     {node.node_id[:8]}  mesh port udp/{node.mesh.transport.port}")
            console.print("invite   token for [bold]mesh-llm --join[/] (also: mesh-llm token):")
            print_token(node.mesh.invite_token)
        elif config.discovery.finds:
            what = f"named {config.discovery.mesh_name!r}" if config.discovery.mesh_name else "to join"
            console.print(f"mesh     looking for a mesh {what} (LAN, then Nostr)…")

    try:
        node = Node(config, load_resources(config), on_ready=ready)
        code = asyncio.run(node.run())
    except MeshError as exc:
        error(f"{exc}")
        return 2
    if node.fatal is not None:
        error(str(node.fatal))
    return code


def cmd_download(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm download", description="List the model catalog, or download one entry."
    )
    p.add_argument("name", nargs="?", help="catalog name to download (omit to list the catalog)")
    p.add_argument("--draft", action="store_true", help="also download the catalog's draft model for it")
    args = p.parse_args(argv)
    from mesh_llm.cli.render import catalog_table
    from mesh_llm.models.catalog import CATALOG, lookup
    from mesh_llm.models.resolve import download, local_path

    try:
        if args.name is None:
            on_disk = {e.name for e in CATALOG if local_path(e) is not None}
            Console().print(catalog_table(on_disk=on_disk))
            return 0
        entry = lookup(args.name)
        entries = [entry]
        if args.draft:
            if entry.draft is None:
                error(f"{entry.name} has no draft model in the catalog")
                return 1
            entries.append(lookup(entry.draft))
        for e in entries:
            found = local_path(e)
            if found is not None:
                Console().print(f"{e.name} is already on disk: {found}")
            else:
                Console().print(f"downloaded {e.name}: {download(e)}")
        return 0
    except MeshError as exc:
        error(f"{exc}")
        return 1


def _node_options(p: argparse.ArgumentParser) -> None:
    """How a command finds the running node: its runtime file, or a port given by hand."""
    p.add_argument(
        "--state-dir", default=None, metavar="DIR",
        help="the node's state directory, whose runtime file names its ports (default ~/.mesh-llm)",
    )  # fmt: skip
    p.add_argument(
        "--console", type=int, default=None, metavar="PORT",
        help="the node's console port (default: from the runtime file, else 3131)",
    )  # fmt: skip


def _state_dir(value: str | None) -> Path:
    return Path(value).expanduser() if value else Path.home() / ".mesh-llm"


class _NoNode(Exception):
    """No running node could be found; the message says where we looked."""


def _find_node(args: argparse.Namespace, *, console_only: bool = False) -> tuple[int, str]:
    """(port, what it is) of the running node to ask: --console, else the runtime file, else 3131."""
    if args.console is not None:
        return args.console, "console"
    from mesh_llm.runtime import RuntimeFile

    state = _state_dir(args.state_dir)
    found = RuntimeFile(state).read()
    if found is None:
        if args.state_dir is None:
            return DEFAULT_CONSOLE_PORT, "console"
        raise _NoNode(f"no mesh-llm node is running with state directory {state} (no live runtime file)")
    if found.console_port:
        return found.console_port, "console"
    if console_only or not found.api_port:
        raise _NoNode(f"the node running from {state} has no console (started with --no-console)")
    return found.api_port, "API"


def _status(args: argparse.Namespace) -> dict[str, Any] | None:
    """The running node's status, or None after printing why it could not be read."""
    try:
        port, what = _find_node(args)
    except _NoNode as exc:
        error(f"{exc}")
        return None
    code, body = _control("GET", "/api/status", port, what=what)
    if code != 200:
        if code:
            error(f"{_message(body)}")
        return None
    return body


def cmd_status(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm status",
        description="Show the running node: its models (solo or split, layers, epoch, load time), "
        "peers and the full invite token. Finds the node through the runtime file in its state "
        "directory; give --state-dir for a node started with one.",
    )
    _node_options(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    args = p.parse_args(argv)

    from mesh_llm.cli.render import status_view

    body = _status(args)
    if body is None:
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    out = Console()
    out.print(status_view(body))
    token = body.get("invite_token")
    if token:
        out.print("[bold]invite token[/] (join with mesh-llm --join TOKEN):")
        print_token(str(token), to=sys.stdout)
    elif body.get("invite_token_hidden"):
        out.print(f"invite token {body['invite_token_hidden']}")
    return 0


def cmd_token(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm token",
        description="Print the running node's invite token, alone on one line (for scripts and copying).",
    )
    _node_options(p)
    args = p.parse_args(argv)
    body = _status(args)
    if body is None:
        return 1
    token = body.get("invite_token")
    if not token:
        reason = body.get("invite_token_hidden") or "this node is in no mesh (it is idle)"
        error(f"no invite token: {reason}")
        return 1
    print_token(str(token), to=sys.stdout)
    return 0


def _message(body: dict[str, object]) -> str:
    """The text of an error answer: OpenAI-shaped, FastAPI's detail, or the raw body."""
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        hint = (
            " (set MESH_LLM_API_KEY to the node's API key)" if error.get("code") == "invalid_api_key" else ""
        )
        return f"{error['message']}{hint}"
    return str(body.get("detail", body))


def _control(
    method: str, path: str, port: int, what: str = "console", **kwargs: object
) -> tuple[int, dict[str, object]]:
    import httpx

    key = api_key_from_env(os.environ)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30.0, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        error(f"no mesh-llm node answered on {what} port {port} ({exc})")
        return 0, {}
    try:
        return r.status_code, dict(r.json())
    except ValueError:
        return r.status_code, {"detail": r.text}


def cmd_drop(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="mesh-llm drop", description="Stop serving a model on the running node.")
    p.add_argument("model")
    _node_options(p)
    args = p.parse_args(argv)
    try:
        port, _ = _find_node(args, console_only=True)
    except _NoNode as exc:
        error(f"{exc}")
        return 1
    code, body = _control("POST", "/api/drop", port, json={"model": args.model})
    if code == 200:
        Console().print(f"dropped {body['dropped']}: this node no longer serves it")
        return 0
    if code:
        error(f"{_message(body)}")
    return 1


def cmd_plan(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm plan", description="Show the plan the mesh would choose for a model."
    )
    p.add_argument("model")
    _node_options(p)
    args = p.parse_args(argv)
    try:
        port, _ = _find_node(args, console_only=True)
    except _NoNode as exc:
        error(f"{exc}")
        return 1
    code, body = _control("GET", "/api/plan", port, params={"model": args.model})
    if code != 200:
        if code:
            error(f"{_message(body)}")
        return 1
    from mesh_llm.cli.render import plan_table

    Console().print(plan_table(body))
    return 0


def _config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(xdg).expanduser() if xdg else Path.home() / ".config"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _client_parser(tool: str, default: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"mesh-llm {tool}",
        description=f"Print a {tool} configuration that uses the running node (base URL, model ids, "
        "and the MESH_LLM_API_KEY variable when the node needs a key), or write it with --write.",
    )
    _node_options(p)
    p.add_argument(
        "--write", nargs="?", const=default, default=None, metavar="PATH",
        help=f"write the configuration (default {default}) instead of printing it",
    )  # fmt: skip
    return p


def _client_config(
    name: str, default: Path, argv: Sequence[str], build: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[argparse.Namespace, dict[str, Any]] | int:
    """The parsed flags and the client configuration built from the running node, or an exit code."""
    args = _client_parser(name, str(default)).parse_args(argv)
    body = _status(args)
    if body is None:
        return 1
    try:
        config = build(body)
    except ValueError as exc:
        error(f"{exc}")
        return 1
    if args.write is None:
        print(json.dumps(config, indent=2))
        return 0
    return args, config


def cmd_opencode(argv: Sequence[str]) -> int:
    from mesh_llm.cli.clients import merge_opencode, opencode_config

    built = _client_config("opencode", _config_home() / "opencode" / "opencode.json", argv, opencode_config)
    if isinstance(built, int):
        return built
    args, config = built
    path = Path(args.write).expanduser()
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            error(f"{path} is not plain JSON ({exc}); add the provider by hand")
            return 1
        existing = loaded if isinstance(loaded, dict) else {}
    _write_json(path, merge_opencode(existing, config))
    Console().print(f"wrote provider 'mesh-llm' to {path}; start opencode and pick a mesh-llm model")
    return 0


def cmd_goose(argv: Sequence[str]) -> int:
    from mesh_llm.cli.clients import GOOSE_PROVIDER_ID, goose_provider

    default = _config_home() / "goose" / "custom_providers" / f"{GOOSE_PROVIDER_ID}.json"
    built = _client_config("goose", default, argv, goose_provider)
    if isinstance(built, int):
        return built
    args, provider = built
    path = Path(args.write).expanduser()
    _write_json(path, provider)
    first = provider["models"][0]["name"] if provider["models"] else "MODEL"
    Console().print(f"wrote {path}; run: goose session --provider {GOOSE_PROVIDER_ID} --model {first}")
    return 0


def cmd_rotate_key(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm rotate-key", description="Replace this machine's node key (a new node id)."
    )
    p.add_argument("--state-dir", default=None, metavar="DIR", help="state directory (default ~/.mesh-llm)")
    args = p.parse_args(argv)
    from pathlib import Path

    from mesh_llm.mesh.identity import NodeIdentity

    state = Path(args.state_dir).expanduser() if args.state_dir else Path.home() / ".mesh-llm"
    try:
        identity = NodeIdentity.rotate(state / "node.key")
    except MeshError as exc:
        error(f"{exc}")
        return 1
    Console().print(f"new node id {identity.node_id} (restart the node to use it)")
    return 0


def _cmd_gpus(argv: Sequence[str]) -> int:
    from mesh_llm.cli.gpus import cmd_gpus

    return cmd_gpus(argv)


def _cmd_discover(argv: Sequence[str]) -> int:
    from mesh_llm.cli.discover import cmd_discover

    return cmd_discover(argv)


SUBCOMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "status": ("show the running node: models, split, peers, invite token", cmd_status),
    "token": ("print the running node's invite token, alone on one line", cmd_token),
    "download": ("list the model catalog, or download one model", cmd_download),
    "drop": ("stop serving a model on the running node", cmd_drop),
    "plan": ("show the plan the mesh would choose for a model", cmd_plan),
    "opencode": ("print (or --write) an opencode configuration for this node", cmd_opencode),
    "goose": ("print (or --write) a goose provider for this node", cmd_goose),
    "rotate-key": ("replace this machine's node key (a new node id)", cmd_rotate_key),
    "discover": ("list published meshes on the LAN and on Nostr relays", _cmd_discover),
    "gpus": ("list this machine's devices (GPUs, CPU) and their memory", _cmd_gpus),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]][1](argv[1:])
    if argv and argv[0] == "help":
        if len(argv) > 1 and argv[1] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[1]][1](["--help"])
        node_parser().print_help()
        return 0
    if argv and not argv[0].startswith("-"):
        error(f"unknown command {argv[0]!r}. Commands: {', '.join(SUBCOMMANDS)} (see mesh-llm --help)")
        return 2
    return run_node(argv)
