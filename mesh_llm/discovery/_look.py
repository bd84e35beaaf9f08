"""One look for published meshes: the LAN (mDNS) and the Nostr relays, errors said plainly."""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.discovery._listing import Found, by_mesh, latest_per_publisher
from mesh_llm.discovery._mdns import browse_lan
from mesh_llm.discovery._nostr import NostrRelays
from mesh_llm.errors import DiscoveryError


@dataclass(frozen=True)
class Discovered:
    """What one look at the LAN and the relays found."""

    found: tuple[Found, ...]
    errors: tuple[str, ...]  # relays or LAN that could not be used, said plainly
    ignored: tuple[str, ...]  # listings refused, and why


async def discover(relays: NostrRelays | None, *, lan_wait_s: float | None, nostr: bool = True) -> Discovered:
    """Listen on the LAN (if `lan_wait_s`), then ask the relays (if `nostr`); never raises for either."""
    found: list[Found] = []
    errors: list[str] = []
    ignored: list[str] = []
    if lan_wait_s is not None:
        try:
            f, i = await browse_lan(lan_wait_s)
            found += f
            ignored += i
        except DiscoveryError as exc:
            errors.append(f"LAN: {exc}")
    if nostr and relays is not None:
        try:
            f, _, i = await relays.fetch()
            found += f
            ignored += i
        except DiscoveryError as exc:
            errors.append(str(exc))
    return Discovered(tuple(latest_per_publisher(found)), tuple(errors), tuple(ignored))


def mesh_rows(found: tuple[Found, ...] | list[Found]) -> list[tuple[Found, int]]:
    """`discover`'s rows: one per mesh."""
    return by_mesh(list(found))
