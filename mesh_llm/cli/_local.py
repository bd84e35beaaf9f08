"""Commands that need no running node: `mesh-llm download` and `mesh-llm rotate-key`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from mesh_llm.cli._output import error
from mesh_llm.errors import MeshError
from mesh_llm.settings import node_default


def cmd_download(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm download",
        description="List the model catalog, or download one entry. Files go to the Hugging Face "
        "cache (~/.cache/huggingface/hub, or $HF_HOME/hub), where nodes find them; the bundled "
        "demo models are read from their installed packages.",
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


def cmd_rotate_key(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm rotate-key", description="Replace this machine's node key (a new node id)."
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help=f"state directory (default {node_default('state_dir')})",
    )
    args = p.parse_args(argv)
    from pathlib import Path

    from mesh_llm.peer.identity import NodeIdentity

    state = Path(args.state_dir).expanduser() if args.state_dir else Path.home() / ".mesh-llm"
    try:
        identity = NodeIdentity.rotate(state / "node.key")
    except MeshError as exc:
        error(f"{exc}")
        return 1
    Console().print(f"new node id {identity.node_id} (restart the node to use it)")
    return 0
