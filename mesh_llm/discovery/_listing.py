"""A mesh listing: what a published mesh tells strangers, and the checks a listing must pass.

On Nostr a listing is the content of a replaceable event of kind 31990 (NIP-89's application
handler kind) with a `d` and a `k` tag of "mesh-llm" and an `expiration` tag (NIP-40), as
upstream mesh-llm publishes it; the field names of the JSON content are upstream's too. Over
mDNS the very same signed event travels in TXT records, so one set of checks serves both paths.

A listing holds only what a joiner needs: the invite token (mesh id, secret, one node's id
and addresses), what the mesh serves and wants, its size, and its name/region tags.

Pure: no I/O. Signature checking needs secp256k1 Schnorr, which the Nostr shell does with
nostr-sdk and reports here as `signature_ok`; the clock comes in as `now`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from mesh_llm.errors import ListingError, TokenError
from mesh_llm.peer.token import InviteToken

LISTING_KIND = 31990
LISTING_TAG = "mesh-llm"  # the value of the `d` and `k` tags
# Upstream mesh-llm's default relays.
DEFAULT_RELAYS = ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.nostr.band")
MAX_CONTENT_BYTES = 16 * 1024
MAX_LIFETIME_S = 3600  # a listing claiming to live longer than this is refused
CLOCK_SKEW_S = 300  # how far in the future a listing's creation time may lie
MAX_NAMES = 64  # models per list
MAX_NAME_CHARS = 128  # model, mesh and region names
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class Listing:
    """One mesh, as its publisher describes it."""

    invite_token: str
    mesh_id: str  # hex, equal to the token's mesh id
    serving: tuple[str, ...] = ()  # models warm and answering now
    wanted: tuple[str, ...] = ()  # models asked for that nobody serves yet
    on_disk: tuple[str, ...] = ()  # models members could load without downloading
    total_vram_bytes: int = 0
    node_count: int = 1  # serving-capable nodes (clients not counted)
    client_count: int = 0
    max_clients: int = 0  # 0: no cap
    name: str | None = None
    region: str | None = None
    version: str = ""

    @property
    def token(self) -> InviteToken:
        """The decoded invite token (checked at parse time, so this does not fail)."""
        return InviteToken.decode(self.invite_token)

    @property
    def full(self) -> bool:
        """The mesh takes no more clients."""
        return self.max_clients > 0 and self.client_count >= self.max_clients

    def to_json(self) -> str:
        """The listing as the JSON content of its event (upstream's field names)."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return json.dumps({k: v for k, v in data.items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Listing:
        """Parse and check listing content; raise ListingError saying what is wrong."""
        if len(text.encode("utf-8")) > MAX_CONTENT_BYTES:
            raise ListingError(f"listing content is larger than {MAX_CONTENT_BYTES} bytes")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ListingError(f"listing content is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ListingError("listing content is not a JSON object")
        token_text = _text(data, "invite_token", required=True, limit=4096)
        assert token_text is not None
        try:
            token = InviteToken.decode(token_text)
        except TokenError as exc:
            raise ListingError(f"listing's invite token does not decode: {exc}") from exc
        mesh_id = _text(data, "mesh_id", limit=64) or token.mesh_id.hex()
        if mesh_id != token.mesh_id.hex():
            raise ListingError("listing's mesh id is not the mesh id of its invite token")
        return cls(
            invite_token=token_text,
            mesh_id=mesh_id,
            serving=_names(data, "serving"),
            wanted=_names(data, "wanted"),
            on_disk=_names(data, "on_disk"),
            total_vram_bytes=_count(data, "total_vram_bytes", 0, limit=2**62),
            node_count=_count(data, "node_count", 1),
            client_count=_count(data, "client_count", 0),
            max_clients=_count(data, "max_clients", 0),
            name=_text(data, "name"),
            region=_text(data, "region"),
            version=(_text(data, "version") or "") if data.get("version") != "" else "",
        )


@dataclass(frozen=True)
class Found:
    """A listing that passed every check, with where and from whom it came."""

    listing: Listing
    publisher: str  # the Nostr public key (hex) that signed it
    published_at: int  # unix seconds
    expires_at: int
    source: str  # "lan" or "nostr"
    where: str  # the relay URL, or the LAN service name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for `discover --json` and the console."""
        return {
            **json.loads(self.listing.to_json()),
            "publisher": self.publisher,
            "published_at": self.published_at,
            "expires_at": self.expires_at,
            "source": self.source,
            "where": self.where,
        }


def listing_from_event(event: Any, *, signature_ok: bool, now: float, source: str, where: str) -> Found:
    """Check a Nostr event (parsed JSON) and return its listing; raise ListingError if it is ignored.

    Refused: a bad or missing signature, another kind or tag, no expiration or an expired one,
    a lifetime over MAX_LIFETIME_S, a creation time in the future, and content that does not
    parse or whose token does not decode.
    """
    if not signature_ok:
        raise ListingError("listing's signature does not verify")
    if not isinstance(event, dict):
        raise ListingError("listing event is not a JSON object")
    if event.get("kind") != LISTING_KIND:
        raise ListingError(f"event kind {event.get('kind')!r} is not a mesh listing ({LISTING_KIND})")
    tags = event.get("tags")
    if not isinstance(tags, list):
        raise ListingError("listing event has no tag list")
    values: dict[str, str] = {}
    for tag in tags:
        if isinstance(tag, list) and len(tag) >= 2 and all(isinstance(t, str) for t in tag[:2]):
            values.setdefault(tag[0], tag[1])
    if values.get("d") != LISTING_TAG or values.get("k") != LISTING_TAG:
        raise ListingError(f"event lacks the d/k tags {LISTING_TAG!r}")
    created = event.get("created_at")
    if not isinstance(created, int) or isinstance(created, bool):
        raise ListingError("listing event has no creation time")
    try:
        expires = int(values["expiration"])
    except (KeyError, ValueError) as exc:
        raise ListingError("listing has no expiration") from exc
    if expires <= now:
        raise ListingError(f"listing expired {now - expires:.0f} s ago")
    if created > now + CLOCK_SKEW_S:
        raise ListingError("listing claims to be created in the future")
    if expires - max(created, int(now)) > MAX_LIFETIME_S:
        raise ListingError(f"listing claims to live longer than {MAX_LIFETIME_S} s")
    content = event.get("content")
    if not isinstance(content, str):
        raise ListingError("listing event has no content")
    publisher = event.get("pubkey")
    if not isinstance(publisher, str) or len(publisher) != 64:
        raise ListingError("listing event has no publisher key")
    return Found(Listing.from_json(content), publisher, created, expires, source, where)


def latest_per_publisher(found: list[Found]) -> list[Found]:
    """One listing per publisher (the newest): each publisher has one replaceable listing."""
    best: dict[str, Found] = {}
    for f in found:
        key = f.publisher
        if key not in best or f.published_at > best[key].published_at:
            best[key] = f
    return sorted(best.values(), key=lambda f: (-f.published_at, f.publisher))


def by_mesh(found: list[Found]) -> list[tuple[Found, int]]:
    """One row per mesh (its freshest listing) and how many listings name it, biggest mesh first.

    Several members may publish the same mesh, each with its own key and token.
    """
    rows: dict[str, list[Found]] = {}
    for f in latest_per_publisher(found):
        rows.setdefault(f.listing.mesh_id, []).append(f)
    out = [(max(fs, key=lambda f: (f.listing.node_count, f.published_at)), len(fs)) for fs in rows.values()]
    return sorted(
        out, key=lambda r: (-r[0].listing.node_count, -r[0].listing.total_vram_bytes, r[0].listing.mesh_id)
    )


def matches(listing: Listing, *, model: str | None = None, region: str | None = None) -> bool:
    """`discover`'s filters: a model named in any list (substring, any case), an exact region."""
    if model:
        key = model.lower()
        if not any(key in m.lower() for m in (*listing.serving, *listing.wanted, *listing.on_disk)):
            return False
    if region:
        return listing.region is not None and listing.region.lower() == region.lower()
    return True


def _text(
    data: dict[str, Any], key: str, *, required: bool = False, limit: int = MAX_NAME_CHARS
) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ListingError(f"listing has no {key}")
        return None
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ListingError(f"listing's {key} is not a printable string of at most {limit} characters")
    return value


def _names(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise ListingError(f"listing's {key} is not a list of at most {MAX_NAMES} names")
    for v in value:
        if not isinstance(v, str) or not v or len(v) > MAX_NAME_CHARS or not v.isprintable():
            raise ListingError(f"listing's {key} holds something that is not a model name")
    return tuple(value)


def _count(data: dict[str, Any], key: str, default: int, *, limit: int = MAX_COUNT) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ListingError(f"listing's {key} is not a whole number from 0 to {limit}")
    return value
