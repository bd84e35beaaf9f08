"""Discovery: publish a mesh and find one, on Nostr relays and on the LAN (mDNS).

    _listing   the listing format and its checks (pure)
    _scoring   which mesh to join or move to, what to serve alone (pure)
    _config    frozen settings built by the CLI
    _nostr     relays through nostr-sdk (publish, delist, fetch), the Nostr key
    _mdns      the same signed listing over mDNS/DNS-SD with zeroconf
    _host      the node as discovery sees it: `MeshFacts` in, actions out
    _look      one look at the LAN and the relays
    _publisher our listing, published and taken down
    _states    what discovery is doing, as typed records (pure)
    _service   the orchestration the node runs

A published mesh is public by design: its listing carries an invite token, and anyone who
reads it can join the mesh and use its models.
"""

from typing import Any

from mesh_llm.discovery._config import DiscoveryConfig, DiscoveryTiming, check_relay_url, check_tag
from mesh_llm.discovery._listing import DEFAULT_RELAYS, LISTING_KIND, LISTING_TAG, Found, Listing, matches
from mesh_llm.discovery._scoring import Preferences, pick_model, rank, score, should_move


# The I/O side (nostr-sdk, zeroconf) loads on first use, so that the CLI's flag parsing and the
# pure modules stay light.
def __getattr__(name: str) -> Any:
    if name in {"Discovered", "discover", "mesh_rows"}:
        from mesh_llm.discovery import _look

        return getattr(_look, name)
    if name in {"DiscoveryHost", "MeshFacts"}:
        from mesh_llm.discovery import _host

        return getattr(_host, name)
    if name == "Discovery":
        from mesh_llm.discovery import _service

        return _service.Discovery
    if name == "NostrRelays":
        from mesh_llm.discovery import _nostr

        return _nostr.NostrRelays
    raise AttributeError(f"module 'mesh_llm.discovery' has no attribute {name!r}")


__all__ = [
    "DEFAULT_RELAYS",
    "LISTING_KIND",
    "LISTING_TAG",
    "Discovered",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryHost",
    "DiscoveryTiming",
    "Found",
    "Listing",
    "MeshFacts",
    "NostrRelays",
    "Preferences",
    "check_relay_url",
    "check_tag",
    "discover",
    "matches",
    "mesh_rows",
    "pick_model",
    "rank",
    "score",
    "should_move",
]
