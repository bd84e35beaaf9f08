"""The node itself: flags -> NodeConfig -> Node, and what it prints once it is up."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from mesh_llm.cli._output import console, error, print_token
from mesh_llm.cli._parser import node_parser
from mesh_llm.cli.logs import setup_logging
from mesh_llm.config import build_config
from mesh_llm.errors import MeshError

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


def run_node(argv: Sequence[str]) -> int:
    args = node_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format, console)
    try:
        config = build_config(args, environ=os.environ)
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
        where = " on " + ", ".join(config.discovery.relays) + (" and the LAN" if config.discovery.lan else "")
        console.print(PUBLIC_WARNING.format(where=where))

    from mesh_llm.node import Node, StopWatch, load_resources

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
            where = "LAN, then Nostr" if config.discovery.lan else "Nostr"
            console.print(f"mesh     looking for a mesh {what} ({where})…")

    try:
        # Armed when the stop begins and never disarmed: it also bounds asyncio.run's cleanup.
        watch = StopWatch(config.timing.stop_deadline_s)
        node = Node(config, load_resources(config), on_ready=ready, stop_watch=watch)
        code = asyncio.run(node.run())
    except MeshError as exc:
        error(f"{exc}")
        return 2
    if node.fatal is not None:
        error(str(node.fatal))
    return code
