"""`mesh-llm discover`: the meshes published on the LAN and on Nostr, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

from rich.table import Table

from mesh_llm.cli._output import console, stdout_console
from mesh_llm.cli.render import human_bytes
from mesh_llm.discovery import (
    DEFAULT_RELAYS,
    Discovered,
    DiscoveryTiming,
    Found,
    check_relay_url,
    discover,
    matches,
    mesh_rows,
)
from mesh_llm.errors import MeshError


def discover_table(rows: list[tuple[Found, int]], now: float | None = None) -> Table:
    """One row per mesh, biggest first (pure)."""
    now = time.time() if now is None else now
    table = Table(title="Published meshes (public: anyone may join them)", title_justify="left")
    for col in (
        "name",
        "mesh",
        "nodes",
        "clients",
        "capacity",
        "serving",
        "wanted",
        "region",
        "found on",
        "age",
    ):
        table.add_column(col, overflow="fold")
    for f, listings in rows:
        li = f.listing
        clients = f"{li.client_count}/{li.max_clients}" if li.max_clients else str(li.client_count)
        table.add_row(
            li.name or "[dim](unnamed)[/]",
            li.mesh_id[:8] + (f" x{listings}" if listings > 1 else ""),
            str(li.node_count),
            clients + (" [red]full[/]" if li.full else ""),
            human_bytes(li.total_vram_bytes),
            ", ".join(li.serving) or "[dim]-[/]",
            ", ".join(li.wanted) or "[dim]-[/]",
            li.region or "[dim]-[/]",
            "LAN" if f.source == "lan" else f"Nostr ({f.where})",
            f"{max(0, now - f.published_at):.0f} s",
        )
    if not rows:
        table.caption = "no mesh found"
    else:
        table.caption = (
            "join one with: mesh-llm --auto  (or --client --auto; --mesh-name NAME for a named one)"
        )
    return table


def cmd_discover(argv: Sequence[str]) -> int:
    timing = DiscoveryTiming()
    p = argparse.ArgumentParser(
        prog="mesh-llm discover",
        description="List the meshes published on the LAN and on Nostr relays. Published meshes are public.",
    )
    p.add_argument(
        "--model", default=None, metavar="M", help="only meshes that serve, want or hold this model"
    )
    p.add_argument("--region", default=None, metavar="R", help="only meshes tagged with this region")
    p.add_argument("--json", action="store_true", help="print the listings as JSON (invite tokens included)")
    p.add_argument(
        "--nostr-relay", action="append", default=[], metavar="URL",
        help="relay to ask (repeatable; default: " + ", ".join(DEFAULT_RELAYS) + ")",
    )  # fmt: skip
    p.add_argument("--no-lan", action="store_true", help="do not listen for meshes on the LAN")
    p.add_argument("--no-nostr", action="store_true", help="do not ask Nostr relays")
    p.add_argument(
        "--timeout", type=float, default=timing.relay_timeout_s, metavar="S",
        help=f"seconds to wait for relays (default {timing.relay_timeout_s:.0f})",
    )  # fmt: skip
    p.add_argument(
        "--lan-wait", type=float, default=timing.lan_wait_s, metavar="S",
        help=f"seconds to listen on the LAN (default {timing.lan_wait_s:.0f})",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        relays = tuple(check_relay_url(u) for u in args.nostr_relay) or DEFAULT_RELAYS
        if not (args.timeout > 0 and args.lan_wait > 0):
            raise MeshError("--timeout and --lan-wait must be positive numbers of seconds")
    except MeshError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    from mesh_llm.discovery import NostrRelays

    async def look() -> Discovered:
        client = None if args.no_nostr else NostrRelays(relays, None, args.timeout)
        try:
            return await discover(
                client, lan_wait_s=None if args.no_lan else args.lan_wait, nostr=client is not None
            )
        finally:
            if client is not None:
                await client.close()

    seen = asyncio.run(look())
    for err in seen.errors:
        console.print(f"[yellow]warning:[/] {err}")
    rows = [
        (f, n) for f, n in mesh_rows(seen.found) if matches(f.listing, model=args.model, region=args.region)
    ]
    if args.json:
        print(json.dumps([f.to_dict() | {"listings": n} for f, n in rows], indent=2))
    else:
        stdout_console().print(discover_table(rows))
        if seen.ignored:
            console.print(
                f"ignored {len(seen.ignored)} listing(s) that failed their checks (run with --json for the valid ones)"
            )
    nostr_failed = not args.no_nostr and any(not e.startswith("LAN") for e in seen.errors)
    return 1 if not rows and nostr_failed else 0
