"""Discovery settings, built once at the edge (the CLI) and passed down frozen."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mesh_llm.discovery._listing import DEFAULT_RELAYS, MAX_NAME_CHARS
from mesh_llm.errors import ConfigError


@dataclass(frozen=True)
class DiscoveryTiming:
    """Periods and deadlines. The defaults are the product's; tests shorten them."""

    publish_interval_s: float = 60.0  # republish this often
    ttl_s: float = 120.0  # each listing expires this long after it is published
    client_retry_s: float = 15.0  # `--client --auto` looks again this often until it finds a mesh
    alone_s: float = 90.0  # a node with no peers this long looks for a mesh again
    takeover_s: float = 30.0  # members check this often that someone still lists the mesh
    converge_s: float = 60.0  # `--mesh-name` publishers look for a larger namesake this often
    lan_wait_s: float = 2.0  # how long to listen for mDNS answers
    relay_timeout_s: float = 5.0  # every relay connect, send and fetch
    join_timeout_s: float = 15.0  # reaching a candidate's node

    def with_overrides(self, text: str) -> DiscoveryTiming:
        """Apply 'name=seconds,...' (the hidden --discovery-timing flag); raise ConfigError if bad."""
        names = {f.removesuffix("_s"): f for f in self.__dataclass_fields__}
        changes: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in names:
                raise ConfigError(
                    f"--discovery-timing: {part!r} is not one of {', '.join(sorted(names))}=SECONDS"
                )
            try:
                seconds = float(value)
            except ValueError as exc:
                raise ConfigError(f"--discovery-timing: {value!r} is not a number of seconds") from exc
            if not seconds > 0:
                raise ConfigError(f"--discovery-timing: {key} must be positive")
            changes[names[key]] = seconds
        return replace(self, **changes)


@dataclass(frozen=True)
class DiscoveryConfig:
    """What the node does about discovery: publish, find, or both."""

    publish: bool = False  # list this mesh on Nostr and the LAN
    auto: bool = False  # find a mesh to join (LAN first, then Nostr) instead of a token
    mesh_name: str | None = None
    region: str | None = None
    max_clients: int | None = None
    relays: tuple[str, ...] = DEFAULT_RELAYS
    lan: bool = True
    timing: DiscoveryTiming = field(default_factory=DiscoveryTiming)

    @property
    def finds(self) -> bool:
        """The node looks for its mesh instead of being given a token."""
        return self.auto or self.mesh_name is not None

    @property
    def active(self) -> bool:
        return self.finds or self.publish


def check_relay_url(url: str) -> str:
    """A relay address as given to --nostr-relay, checked; raise ConfigError if it is not ws(s)://."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss") or not rest or any(c.isspace() for c in url):
        raise ConfigError(f"--nostr-relay {url!r} is not a relay address like wss://relay.example.org")
    return url


def check_tag(value: str | None, flag: str) -> str | None:
    """A mesh name or region: printable, at most MAX_NAME_CHARS characters."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ConfigError(f"{flag} must be printable text of 1 to {MAX_NAME_CHARS} characters")
    return value
