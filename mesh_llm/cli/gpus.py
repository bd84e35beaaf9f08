"""`mesh-llm gpus`: the devices ggml lists on this machine, with their memory."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from mesh_llm.cli.render import human_bytes
from mesh_llm.errors import MeshError
from mesh_llm.serving.devices import Device, select_devices


def devices_table(devices: Sequence[Device], chosen: Sequence[Device]) -> Table:
    """Pure rendering: one row per device; ``*`` marks those a node would serve from."""
    table = Table(title="ggml devices")
    for column in ("", "device", "type", "description", "free", "total"):
        table.add_column(column, justify="right" if column in ("free", "total") else "left")
    for d in devices:
        mark = "*" if d in chosen else ""
        table.add_row(
            mark, d.name, d.kind.name, d.description, human_bytes(d.free_bytes), human_bytes(d.total_bytes)
        )
    return table


def cmd_gpus(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="mesh-llm gpus", description="list this machine's ggml devices and memory"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default=None, help="show which devices this --device value picks")
    args = p.parse_args(argv)
    from mesh_llm.serving.devices import probe_devices

    err = Console(stderr=True)
    try:
        devices = probe_devices()
        chosen = select_devices(devices, args.device)
    except MeshError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 1
    if args.json:
        rows = [dict(d.as_dict(), selected=d in chosen) for d in devices]
        print(json.dumps({"devices": rows}, indent=2))
        return 0
    out = Console()
    out.print(devices_table(devices, chosen))
    if not any(d.is_gpu for d in devices):
        out.print("no GPU: this llama.cpp build serves from the CPU (see docs/gpus.md)")
    return 0
