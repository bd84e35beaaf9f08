"""`mesh-llm status` and `mesh-llm token`: the running node's status, as tables or JSON, and its token."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mesh_llm.cli._control import fetch_status, node_options
from mesh_llm.cli._output import error, print_token, stdout_console


def cmd_status(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm status",
        description="Show the running node: its models (solo or split, layers, epoch, load time), "
        "peers and the full invite token. Finds the node through the runtime file in its state "
        "directory; give --state-dir for a node started with one.",
    )
    node_options(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    args = p.parse_args(argv)

    from mesh_llm.cli.render import status_view

    body = fetch_status(args)
    if body is None:
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    out = stdout_console()
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
    node_options(p)
    args = p.parse_args(argv)
    body = fetch_status(args)
    if body is None:
        return 1
    token = body.get("invite_token")
    if not token:
        reason = body.get("invite_token_hidden") or "this node is in no mesh (it is idle)"
        error(f"no invite token: {reason}")
        return 1
    print_token(str(token), to=sys.stdout)
    return 0
