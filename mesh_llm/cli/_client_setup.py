"""`mesh-llm opencode` and `mesh-llm goose`: client configurations for the running node, printed or written."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh_llm.cli._control import fetch_status, node_options
from mesh_llm.cli._output import error


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
    node_options(p)
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
    body = fetch_status(args)
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
