"""Commands that talk to the running node: how they find it, ask it, and `drop` / `plan`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh_llm.cli._output import console, error
from mesh_llm.config import DEFAULT_CONSOLE_PORT, api_key_from_env
from mesh_llm.settings import node_default

STATE_DIR = str(node_default("state_dir"))


def node_options(p: argparse.ArgumentParser) -> None:
    """How a command finds the running node: its runtime file, or a port given by hand."""
    p.add_argument(
        "--state-dir", default=None, metavar="DIR",
        help=f"the node's state directory, whose runtime file names its ports (default {STATE_DIR})",
    )  # fmt: skip
    p.add_argument(
        "--console", type=int, default=None, metavar="PORT",
        help=f"the node's console port (default: from the runtime file, else {DEFAULT_CONSOLE_PORT})",
    )  # fmt: skip


def state_dir(value: str | None) -> Path:
    """The state directory a command was given, else the node's default."""
    return Path(value or STATE_DIR).expanduser()


class NoNode(Exception):
    """No running node could be found; the message says where we looked."""


def find_node(args: argparse.Namespace, *, console_only: bool = False) -> tuple[int, str]:
    """(port, what it is) of the running node to ask: --console, else the runtime file, else 3131."""
    if args.console is not None:
        return args.console, "console"
    from mesh_llm.runtime import RuntimeFile

    state = state_dir(args.state_dir)
    found = RuntimeFile(state).read()
    if found is None:
        if args.state_dir is None:
            return DEFAULT_CONSOLE_PORT, "console"
        raise NoNode(f"no mesh-llm node is running with state directory {state} (no live runtime file)")
    if found.console_port:
        return found.console_port, "console"
    if console_only or not found.api_port:
        raise NoNode(f"the node running from {state} has no console (started with --no-console)")
    return found.api_port, "API"


def error_text(body: dict[str, object]) -> str:
    """The text of an error answer: OpenAI-shaped, FastAPI's detail, or the raw body."""
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        hint = (
            " (set MESH_LLM_API_KEY to the node's API key)" if error.get("code") == "invalid_api_key" else ""
        )
        return f"{error['message']}{hint}"
    return str(body.get("detail", body))


def control_call(
    method: str, path: str, port: int, what: str = "console", **kwargs: object
) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON body) of one call to the node; (0, {}) after printing why none answered."""
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


def ask_node(
    args: argparse.Namespace, method: str, path: str, *, console_only: bool = False, **kwargs: object
) -> dict[str, Any] | None:
    """The running node's 200 answer to one call, or None after printing why there is none.

    `console_only`: the call needs the console (a node started with --no-console cannot answer).
    """
    try:
        port, what = find_node(args, console_only=console_only)
    except NoNode as exc:
        error(f"{exc}")
        return None
    code, body = control_call(method, path, port, what=what, **kwargs)
    if code != 200:
        if code:
            error(f"{error_text(body)}")
        elif args.state_dir is None and args.console is None:  # looked in ~/.mesh-llm, then 3131
            console.print(
                "hint: for a node started with --state-dir DIR, give the same --state-dir DIR "
                "(or its console port with --console PORT)",
                soft_wrap=True, highlight=False,
            )  # fmt: skip
        return None
    return body


def fetch_status(args: argparse.Namespace) -> dict[str, Any] | None:
    """The running node's status, or None after printing why it could not be read."""
    return ask_node(args, "GET", "/api/status")


def cmd_drop(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="mesh-llm drop", description="Stop serving a model on the running node.")
    p.add_argument("model")
    node_options(p)
    args = p.parse_args(argv)
    body = ask_node(args, "POST", "/api/drop", console_only=True, json={"model": args.model})
    if body is None:
        return 1
    Console().print(f"dropped {body['dropped']}: this node no longer serves it")
    return 0


def cmd_plan(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm plan", description="Show the plan the mesh would choose for a model."
    )
    p.add_argument("model")
    node_options(p)
    args = p.parse_args(argv)
    body = ask_node(args, "GET", "/api/plan", console_only=True, params={"model": args.model})
    if body is None:
        return 1
    from mesh_llm.cli.render import plan_table

    Console().print(plan_table(body))
    return 0
