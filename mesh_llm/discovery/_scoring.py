"""Which mesh to join, whether to move to another, and what to serve alone (pure).

The score follows upstream mesh-llm's `score_mesh`: a base for being alive, a strong bonus for
the mesh last joined, the community name preferred and other names (someone's private group)
penalised unless asked for by `--mesh-name`, client headroom, node count, warm and wanted
models; full meshes are skipped rather than penalised, and a matching `--region` earns a bonus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh_llm.discovery._listing import Found, Listing

COMMUNITY_NAME = "mesh-llm"
BASE = 100
LAST_MESH_BONUS = 500
COMMUNITY_BONUS = 300
OTHER_NAME_PENALTY = 200
REGION_BONUS = 200
MAX_HEADROOM_BONUS = 20
PER_NODE = 5
MAX_NODES_COUNTED = 10
PER_SERVING = 10
PER_WANTED = 15
NOTHING_WARM_PENALTY = 50  # a client gains nothing from a mesh that serves nothing yet


@dataclass(frozen=True)
class Preferences:
    """What the joining node wants."""

    client: bool = False
    mesh_name: str | None = None  # only meshes of this name (any case), and then every one of them
    region: str | None = None
    last_mesh_id: str | None = None
    own_mesh_id: str | None = None  # never "join" the mesh we are in


def same_name(a: str | None, b: str | None) -> bool:
    """Mesh names match case-insensitively and exactly."""
    return a is not None and b is not None and a.casefold() == b.casefold()


def score(listing: Listing, prefs: Preferences) -> int | None:
    """How good a candidate this mesh is (higher is better), or None if it must be skipped."""
    if listing.full or listing.mesh_id == prefs.own_mesh_id:
        return None
    if prefs.mesh_name is not None and not same_name(listing.name, prefs.mesh_name):
        return None
    points = BASE
    if prefs.mesh_name is None and listing.name is not None:
        points += COMMUNITY_BONUS if same_name(listing.name, COMMUNITY_NAME) else -OTHER_NAME_PENALTY
    if prefs.last_mesh_id is not None and listing.mesh_id == prefs.last_mesh_id:
        points += LAST_MESH_BONUS
    if listing.max_clients > 0:
        points += min(listing.max_clients - listing.client_count, MAX_HEADROOM_BONUS)
    points += min(listing.node_count, MAX_NODES_COUNTED) * PER_NODE
    points += len(listing.serving) * PER_SERVING
    if prefs.client:
        points -= 0 if listing.serving else NOTHING_WARM_PENALTY
    else:
        points += len(listing.wanted) * PER_WANTED  # a mesh that needs help is where we are useful
    if prefs.region is not None and same_name(listing.region, prefs.region):
        points += REGION_BONUS
    return points


def rank(found: Iterable[Found], prefs: Preferences) -> list[Found]:
    """Candidates to try, best first. Without --mesh-name only positive scores count (as upstream).

    LAN listings rank before Nostr ones of equal score; ties break on mesh id so every node that
    sees the same listings makes the same choice.
    """
    scored = []
    for f in found:
        s = score(f.listing, prefs)
        if s is None or (prefs.mesh_name is None and s <= 0):
            continue
        scored.append((s, f))
    scored.sort(key=lambda sf: (-sf[0], sf[1].source != "lan", sf[1].listing.mesh_id, sf[1].publisher))
    return [f for _, f in scored]


def should_move(own_mesh_id: str, own_node_count: int, other: Listing) -> bool:
    """Convergence: the smaller of two meshes leaves and joins the larger.

    Sizes compare by serving-capable node count, ties by mesh id, so of two meshes that see
    each other exactly one moves and they never swap.
    """
    if other.mesh_id == own_mesh_id or other.full:
        return False
    return (other.node_count, other.mesh_id) > (own_node_count, own_mesh_id)


def pick_model(
    catalog: Sequence[tuple[str, int]],
    capacity_bytes: int,
    on_disk: Iterable[str],
    *,
    allow_download: bool,
    fit_factor: float,
) -> str | None:
    """The model a node that starts its own mesh serves: the largest catalog entry that fits.

    One on disk wins over any that needs a download; a download only if allowed. None if
    nothing fits.
    """
    have = set(on_disk)
    fitting = [(size, name) for name, size in catalog if size * fit_factor <= capacity_bytes]
    local = [c for c in fitting if c[1] in have]
    pool = local or (fitting if allow_download else [])
    return max(pool)[1] if pool else None
