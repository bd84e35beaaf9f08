"""Our mesh's listing: signed, published on the Nostr relays and over mDNS, and taken down."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mesh_llm.discovery._config import DiscoveryConfig
from mesh_llm.discovery._host import MeshFacts
from mesh_llm.discovery._listing import Listing
from mesh_llm.discovery._mdns import LanAdvertiser
from mesh_llm.discovery._nostr import NostrRelays, RelayReport, load_or_create_keys, signed_listing
from mesh_llm.errors import DiscoveryError

log = logging.getLogger("mesh_llm.discovery._service")  # one logger for all of discovery's lines


class Notices:
    """What discovery tells the user: its last error, and warnings said once (then at debug)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._said: set[str] = set()

    def first(self, key: str) -> bool:
        """Whether `key` comes up for the first time (it then counts as said)."""
        if key in self._said:
            return False
        self._said.add(key)
        return True

    def warn_once(self, key: str, message: str) -> None:
        """A warning the first time `key` comes up; a debug line after that."""
        if self.first(key):
            log.warning("%s", message)
        else:
            log.debug("%s", message)


class Publisher:
    """Lists the mesh on the relays and the LAN, and takes the listing down."""

    def __init__(
        self, config: DiscoveryConfig, relays: NostrRelays, state_dir: Path, version: str, notices: Notices
    ) -> None:
        self.config = config
        self.timing = config.timing
        self.relays = relays
        self.state_dir = state_dir
        self.version = version
        self.notices = notices
        self.lan: LanAdvertiser | None = None
        self.listing: Listing | None = None
        self.published_at: float | None = None
        self.report: RelayReport | None = None
        self.lan_error: str | None = None
        self.delisted: str | None = None
        self._event_id: Any = None

    @property
    def published(self) -> bool:
        """Whether a listing of ours is up on a relay or on the LAN."""
        return self._event_id is not None or (self.lan is not None and self.lan.advertised)

    def listing_for(self, facts: MeshFacts, name: str | None) -> Listing:
        """The listing of the mesh `facts` describes, under `name`."""
        return Listing(
            invite_token=facts.invite_token,
            mesh_id=facts.mesh_id,
            serving=facts.serving,
            wanted=facts.wanted,
            on_disk=facts.on_disk,
            total_vram_bytes=facts.total_vram_bytes,
            node_count=facts.node_count,
            client_count=facts.client_count,
            max_clients=self.config.max_clients or 0,
            name=name,
            region=self.config.region,
            version=self.version,
        )

    async def publish(self, facts: MeshFacts, name: str | None) -> None:
        """List the mesh afresh (or delist it while --max-clients clients are connected)."""
        cap = self.config.max_clients
        if cap is not None and facts.client_count >= cap:
            await self.delist(f"{facts.client_count} client(s) connected; --max-clients is {cap}")
            return
        if self.delisted is not None:
            log.info("listing the mesh again (%s client(s), --max-clients %s)", facts.client_count, cap)
            self.delisted = None
        listing = self.listing_for(facts, name)
        if self.relays.keys is None:
            self.relays.keys = await asyncio.to_thread(load_or_create_keys, self.state_dir)
        event = signed_listing(listing, self.relays.keys, self.timing.ttl_s)
        self.listing = listing
        try:
            self.report = await self.relays.publish(event)
        except DiscoveryError as exc:
            self.report = RelayReport([], {u: str(exc) for u in self.config.relays})
        if self.report.ok:
            self._event_id = event.id()
            self.published_at = time.time()
            self.notices.error = None
            if self.notices.first("published"):
                log.info("mesh published on %s (public: anyone can join it)", ", ".join(self.report.ok))
            if self.report.failed:
                self.notices.warn_once(
                    f"partial:{sorted(self.report.failed)}",
                    f"some relays refused the listing: {self.report.describe()}",
                )
        else:
            self.notices.error = f"no Nostr relay took the listing ({self.report.describe()})"
            self.notices.warn_once(
                "publish-failed",
                f"{self.notices.error}; the mesh is not listed on Nostr (retrying every "
                f"{self.timing.publish_interval_s:.0f} s); this node keeps serving",
            )
        if self.config.lan:
            await self._advertise_lan(event.as_json(), facts)

    async def _advertise_lan(self, event_json: str, facts: MeshFacts) -> None:
        if self.lan is None:
            self.lan = LanAdvertiser(
                f"mesh-llm-{facts.node_id[:12]}", facts.mesh_port, self.timing.relay_timeout_s
            )
        try:
            await self.lan.update(event_json)
            self.lan_error = None
        except DiscoveryError as exc:
            self.lan_error = str(exc)
            self.notices.warn_once("lan", f"{exc}; the mesh is not listed on the LAN")

    async def delist(self, reason: str | None) -> None:
        """Take our listing down from the relays and the LAN (reason None: we are leaving)."""
        if reason is not None and self.delisted != reason:
            log.info("delisting the mesh: %s", reason)
        self.delisted = reason
        await asyncio.gather(self._withdraw_lan(), self._delist_relays())

    async def _withdraw_lan(self) -> None:
        if self.lan is not None:
            await self.lan.withdraw()

    async def _delist_relays(self) -> None:
        if self._event_id is not None:
            event_id, self._event_id = self._event_id, None
            try:
                await self.relays.delist(event_id)
            except DiscoveryError as exc:
                log.debug("delist: %s", exc)

    async def close(self) -> None:
        """Close the mDNS advertiser (the relays belong to the caller)."""
        if self.lan is not None:
            await self.lan.close()
