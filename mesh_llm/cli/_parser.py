"""The node's flags, `mesh-llm [options]`, made from mesh_llm.settings, with the subcommands listed
in its help."""

from __future__ import annotations

import argparse

from mesh_llm import __version__
from mesh_llm.cli._commands import SUBCOMMANDS
from mesh_llm.settings import GROUPS, NODE, add_flags


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
    add_flags(p, NODE, GROUPS)
    p.add_argument("--version", action="version", version=f"mesh-llm {__version__}")
    return p
