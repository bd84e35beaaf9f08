"""The subcommands: name -> (one-line summary, the function that runs it with its arguments)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mesh_llm.cli._client_setup import cmd_claude, cmd_codex, cmd_goose, cmd_opencode
from mesh_llm.cli._control import cmd_drop, cmd_plan
from mesh_llm.cli._local import cmd_download, cmd_rotate_key
from mesh_llm.cli._status import cmd_status, cmd_token


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
    "claude": ("print (or --write) Claude Code's settings for this node", cmd_claude),
    "codex": ("print (or --write) a Codex configuration for this node", cmd_codex),
    "rotate-key": ("replace this machine's node key (a new node id)", cmd_rotate_key),
    "discover": ("list published meshes on the LAN and on Nostr relays", _cmd_discover),
    "gpus": ("list this machine's devices (GPUs, CPU) and their memory", _cmd_gpus),
}
