"""The `mesh-llm` command: flags -> NodeConfig -> Node, plus small subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler

from mesh_llm import __version__
from mesh_llm.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, api_key_from_env, build_config
from mesh_llm.errors import MeshError
from mesh_llm.mesh.transport import DEFAULT_ENGINE, ENGINES

console = Console(stderr=True)

SUBCOMMANDS = ("download", "status", "rotate-key", "drop", "plan", "discover")

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


def node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh-llm",
        description="Pool spare GPU/CPU capacity across machines and serve LLMs behind one OpenAI-compatible API.",
        epilog="Subcommands: download [NAME] | status | drop MODEL | plan MODEL | rotate-key | discover. "
        "Run `mesh-llm SUBCOMMAND --help` for theirs.",
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
        help="join the mesh of this invite token; repeatable",
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
    p.add_argument("--split", action="store_true", help="split models across nodes even when they fit on one")
    p.add_argument("--device", default=None, help="device to run models on (default: best available)")
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where keys, logs and state live (default ~/.mesh-llm)",
    )
    p.add_argument(
        "--ctx-size",
        type=int,
        default=4096,
        metavar="N",
        help="context window per request slot (default 4096)",
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
        "--nostr-relay", action="append", default=[], metavar="URL",
        help="a Nostr relay (ws:// or wss://) to publish and look on; repeatable; replaces the default list",
    )  # fmt: skip
    # Tests shorten discovery's periods (publish=,alone=,client_retry=,... in seconds).
    g.add_argument("--discovery-timing", default=None, help=argparse.SUPPRESS)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
    )
    for noisy in ("httpx", "httpcore", "uvicorn.error", "aioquic", "qh3", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_node(argv: Sequence[str]) -> int:
    args = node_parser().parse_args(argv)
    _setup_logging(args.verbose)
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
            threads=args.threads,
            parallel=args.parallel,
            max_queue=args.max_queue,
            max_body_mb=args.max_body,
            allow_hosts=args.allow_host,
            quic=args.quic,
            auto=args.auto,
            publish=args.publish,
            mesh_name=args.mesh_name,
            region=args.region,
            max_clients=args.max_clients,
            nostr_relays=args.nostr_relay,
            discovery_timing=args.discovery_timing,
        )
        from mesh_llm.models.resolve import validate_spec

        for spec in config.models:
            validate_spec(spec)
    except MeshError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if config.api.host == "0.0.0.0" and config.api_key is None:
        console.print(
            "[yellow]warning:[/] --listen-all without --api-key: anyone who can reach this machine can use the API"
        )

    if config.discovery.publish:
        where = " on " + ", ".join(config.discovery.relays) + " and the LAN"
        console.print(PUBLIC_WARNING.format(where=where))

    from mesh_llm.node import Node

    def ready(node: Node) -> None:
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
            console.print("invite   [bold]mesh-llm --join " + node.mesh.invite_token + "[/]")
        elif config.discovery.finds:
            what = f"named {config.discovery.mesh_name!r}" if config.discovery.mesh_name else "to join"
            console.print(f"mesh     looking for a mesh {what} (LAN, then Nostr)…")

    try:
        return asyncio.run(Node(config, on_ready=ready).run())
    except MeshError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


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
                console.print(f"[red]error:[/] {entry.name} has no draft model in the catalog")
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
        console.print(f"[red]error:[/] {exc}")
        return 1


def cmd_status(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="mesh-llm status", description="Show the running node's status.")
    p.add_argument("--console", type=int, default=DEFAULT_CONSOLE_PORT, help="the node's console port")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    args = p.parse_args(argv)
    import json

    from mesh_llm.cli.render import status_view

    code, body = _control("GET", "/api/status", args.console)
    if code != 200:
        if code:
            console.print(f"[red]error:[/] {_message(body)}")
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        Console().print(status_view(body))
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


def _control(method: str, path: str, port: int, **kwargs: object) -> tuple[int, dict[str, object]]:
    import httpx

    key = api_key_from_env(os.environ)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30.0, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] no mesh-llm node answered on console port {port} ({exc})")
        return 0, {}
    try:
        return r.status_code, dict(r.json())
    except ValueError:
        return r.status_code, {"detail": r.text}


def cmd_drop(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="mesh-llm drop", description="Stop serving a model on the running node.")
    p.add_argument("model")
    p.add_argument("--console", type=int, default=DEFAULT_CONSOLE_PORT, help="the node's console port")
    args = p.parse_args(argv)
    code, body = _control("POST", "/api/drop", args.console, json={"model": args.model})
    if code == 200:
        Console().print(f"dropped {body['dropped']}: this node no longer serves it")
        return 0
    if code:
        console.print(f"[red]error:[/] {_message(body)}")
    return 1


def cmd_plan(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm plan", description="Show the plan the mesh would choose for a model."
    )
    p.add_argument("model")
    p.add_argument("--console", type=int, default=DEFAULT_CONSOLE_PORT, help="the node's console port")
    args = p.parse_args(argv)
    code, body = _control("GET", "/api/plan", args.console, params={"model": args.model})
    if code != 200:
        if code:
            console.print(f"[red]error:[/] {_message(body)}")
        return 1
    from mesh_llm.cli.render import plan_table

    Console().print(plan_table(body))
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
        console.print(f"[red]error:[/] {exc}")
        return 1
    Console().print(f"new node id {identity.node_id} (restart the node to use it)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "download":
        return cmd_download(argv[1:])
    if argv and argv[0] == "status":
        return cmd_status(argv[1:])
    if argv and argv[0] == "rotate-key":
        return cmd_rotate_key(argv[1:])
    if argv and argv[0] == "drop":
        return cmd_drop(argv[1:])
    if argv and argv[0] == "plan":
        return cmd_plan(argv[1:])
    if argv and argv[0] == "discover":
        from mesh_llm.cli.discover import cmd_discover

        return cmd_discover(argv[1:])
    return run_node(argv)
