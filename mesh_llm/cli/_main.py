"""`mesh-llm ARGS`: a subcommand, help, or else the node itself."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mesh_llm.cli._commands import SUBCOMMANDS
from mesh_llm.cli._output import error
from mesh_llm.cli._parser import node_parser
from mesh_llm.cli._run import run_node


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
