"""`mesh-llm opencode`, `goose`, `claude` and `codex`: client configurations for the running
node, printed, or merged into the client's own configuration with --write."""

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


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path` ({} when there is no file), or None after saying why not."""
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except ValueError as exc:
        error(f"{path} is not plain JSON ({exc}); add the settings by hand")
        return None
    return loaded if isinstance(loaded, dict) else {}


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, metavar="NAME",
        help="the served model to use (default: the ready one with the largest context)",
    )  # fmt: skip


Build = Callable[[dict[str, Any], argparse.Namespace], Any]


def _client_config(
    name: str, default: Path, argv: Sequence[str], build: Build, *, options: Callable[[argparse.ArgumentParser], None] | None = None,
    what: str = "configuration", render: Callable[[Any], str] = lambda c: json.dumps(c, indent=2) + "\n",
) -> tuple[argparse.Namespace, Any] | int:  # fmt: skip
    """The parsed flags and the client configuration built from the running node; when not
    --write, the configuration is printed and an exit code returned instead."""
    p = argparse.ArgumentParser(
        prog=f"mesh-llm {name}",
        description=f"Print the {what} {name} needs to use the running node (its URL, model names, and "
        "the MESH_LLM_API_KEY variable when the node needs a key), or merge it into "
        f"{name}'s own configuration with --write.",
    )
    node_options(p)
    if options is not None:
        options(p)
    p.add_argument(
        "--write", nargs="?", const=str(default), default=None, metavar="PATH",
        help=f"write the {what} (default {default}) instead of printing it",
    )  # fmt: skip
    args = p.parse_args(argv)
    body = fetch_status(args)
    if body is None:
        return 1
    try:
        config = build(body, args)
    except ValueError as exc:
        error(f"{exc}")
        return 1
    if args.write is None:
        print(render(config), end="")
        return 0
    return args, config


def cmd_opencode(argv: Sequence[str]) -> int:
    from mesh_llm.cli.clients import merge_opencode, opencode_config

    default = _config_home() / "opencode" / "opencode.json"
    built = _client_config("opencode", default, argv, lambda status, _: opencode_config(status))
    if isinstance(built, int):
        return built
    args, config = built
    path = Path(args.write).expanduser()
    existing = _read_json(path)
    if existing is None:
        return 1
    _write_json(path, merge_opencode(existing, config))
    Console().print(f"wrote provider 'mesh-llm' to {path}; start opencode and pick a mesh-llm model")
    return 0


def _goose_options(p: argparse.ArgumentParser) -> None:
    from mesh_llm.cli.clients import GOOSE_ENGINES

    p.add_argument(
        "--engine", choices=GOOSE_ENGINES, default=GOOSE_ENGINES[0],
        help="which of goose's engines talks to the node: openai (Chat Completions, default) or anthropic (Messages)",
    )  # fmt: skip


def cmd_goose(argv: Sequence[str]) -> int:
    from mesh_llm.cli.clients import GOOSE_PROVIDER_ID, goose_provider

    default = _config_home() / "goose" / "custom_providers" / f"{GOOSE_PROVIDER_ID}.json"
    built = _client_config(
        "goose", default, argv, lambda status, args: goose_provider(status, args.engine),
        options=_goose_options, what="custom provider",
    )  # fmt: skip
    if isinstance(built, int):
        return built
    args, provider = built
    path = Path(args.write).expanduser()
    _write_json(path, provider)
    first = provider["models"][0]["name"] if provider["models"] else "MODEL"
    Console().print(f"wrote {path}; run: goose session --provider {GOOSE_PROVIDER_ID} --model {first}")
    return 0


def _claude_options(p: argparse.ArgumentParser) -> None:
    _model_option(p)
    p.add_argument(
        "--small-model", default=None, metavar="NAME",
        help="the served model for Claude Code's small tasks (titles, summaries; default: --model's)",
    )  # fmt: skip


def cmd_claude(argv: Sequence[str]) -> int:
    from mesh_llm.cli.agents import claude_env, claude_exports, claude_settings, merge_claude

    built = _client_config(
        "claude", Path.home() / ".claude" / "settings.json", argv,
        lambda status, args: claude_env(status, args.model, args.small_model),
        options=_claude_options, what="environment", render=lambda env_auth: claude_exports(*env_auth),
    )  # fmt: skip
    if isinstance(built, int):
        return built
    args, (env, auth) = built
    path = Path(args.write).expanduser()
    existing = _read_json(path)
    if existing is None:
        return 1
    _write_json(path, merge_claude(existing, claude_settings(env, auth)))
    key = " (export MESH_LLM_API_KEY first: the node needs its key)" if auth else ""
    Console().print(f"wrote the node's settings into {path}; run: claude{key}")
    return 0


def cmd_codex(argv: Sequence[str]) -> int:
    from mesh_llm.cli import _toml
    from mesh_llm.cli.agents import codex_config

    built = _client_config(
        "codex", Path.home() / ".codex" / "config.toml", argv,
        lambda status, args: codex_config(status, args.model),
        options=_model_option, render=_toml.dumps,
    )  # fmt: skip
    if isinstance(built, int):
        return built
    args, config = built
    path = Path(args.write).expanduser()
    try:
        text = _toml.merge(path.read_text() if path.is_file() else "", config)
    except ValueError as exc:
        error(f"{path}: {exc}; set the printed values by hand (`mesh-llm codex`)")
        return 1
    _write_text(path, text)
    needs_key = any("env_key" in provider for provider in config["model_providers"].values())
    key = " (export MESH_LLM_API_KEY first: the node needs its key)" if needs_key else ""
    Console().print(f"wrote provider 'mesh-llm' and model {config['model']} into {path}; run: codex{key}")
    return 0
